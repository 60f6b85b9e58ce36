"""benchmarks/model_fidelity.py --replay: the structured model fitted to a recorded cell's first five
structured trials, scored against every other schedule the cell measured, without running anything."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tune(out: Path, strategy: str, budget: int) -> None:
    subprocess.run([sys.executable, "-m", "hpcps.tune", "--job", "jobs/hetero8.toml", "--backend", "sim",
                    "--strategy", strategy, "--budget", str(budget), "--out", str(out), "--seed", "1", "--quiet"],
                   cwd=ROOT, env=ENV, check=True, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """A cell as benchmarks/tune_testbed.py leaves one (here with the sim backend): one run per strategy."""
    root = tmp_path_factory.mktemp("cell") / "hetero8" / "seed-1"
    for strategy, budget in (("structured", 7), ("heuristic", 3), ("random", 4)):
        tune(root / strategy, strategy, budget)
    return root


def replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/model_fidelity.py", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_replay_scores_every_other_schedule_the_cell_measured(cell, tmp_path):
    out = tmp_path / "replay.md"
    r = replay("--replay", str(cell), "--out", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.with_suffix(".json").read_text())
    (res,) = data["results"]
    assert [t["trial"] for t in res["trials"]] == [1, 2, 3, 4, 5]
    from hpcps.tune import rundir
    fitted = set()
    expected = []
    for strategy in ("structured", "heuristic", "random"):
        d = cell / strategy
        for rec in rundir.load_records(d, rundir.read_state(d)):
            key = tuple(rec.point.round(9))
            if strategy == "structured" and rec.trial <= 5:
                fitted.add(key)
            elif rec.ok and key not in fitted and key not in {e[2] for e in expected}:
                expected.append((strategy, rec.trial, key))
    assert [(row["kind"], row["trial"]) for row in res["rows"]] == [(s, t) for s, t, _ in expected]
    assert len(res["rows"]) >= 2            # structured's 6th and 7th at least, and heuristic's own
    for row in res["rows"]:
        assert row["lo90_s"] <= row["predicted_s"] * 1.5 and row["predicted_s"] > 0 and row["measured_s"] > 0
    s = res["summary"]
    assert s["n"] == len(res["rows"]) and 0 <= s["coverage"][0] <= s["coverage"][1] == s["n"]
    text = out.read_text()
    assert f"| replay hetero8/seed-1 | structured trials 1-5 | {s['n']} |" in text


def test_replay_of_something_that_is_not_a_cell_is_refused_and_writes_nothing(cell, tmp_path):
    out = tmp_path / "replay.md"
    r = replay("--replay", str(cell / "structured"), "--out", str(out))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "no structured tuning run" in r.stderr
    assert not out.exists() and not out.with_suffix(".json").exists()
