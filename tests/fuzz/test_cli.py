"""The commands as users run them (subprocesses) on a few generated bad inputs: exit status 0 or 2 with
one line, never a traceback, within a time limit. The many other cases run in-process (test_sim.py,
test_analyze.py, test_loaders.py); these check that the same holds end to end."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import Outcome, assert_clean, mutate
from tests.fuzz.test_loaders import CLUSTER, JOB

ROOT = Path(__file__).resolve().parents[2]


def command(tool: str, *args, cwd: Path, timeout: float = 60) -> Outcome:
    p = subprocess.run([sys.executable, "-m", tool, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=cwd)
    return Outcome(p.returncode, p.stdout, p.stderr)


def job_without_schedule():
    job = {k: v for k, v in JOB.items() if k not in ("schedule", "cluster")}
    job["training"] = dict(job["training"], iterations=2)
    return job


@settings(max_examples=6, deadline=None)
@given(st.data())
def test_sim_command(data):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "c.toml").write_text(tomli_w.dumps(mutate(data, CLUSTER)))
        (d / "j.toml").write_text(tomli_w.dumps(job_without_schedule()))
        out = command("hpcps.sim", "--cluster", d / "c.toml", "--job", d / "j.toml", "--json", cwd=d)
        assert_clean(out, "hpcps.sim")


@settings(max_examples=3, deadline=None)
@given(st.data())
def test_train_command_on_bad_jobs(data):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "j.toml").write_text(tomli_w.dumps(mutate(data, job_without_schedule())))
        out = command("hpcps.train", "--job", d / "j.toml", "--no-trace", "--quiet", cwd=d, timeout=120)
        assert_clean(out, "hpcps.train")
        assert sorted(p.name for p in d.iterdir()) == ["j.toml"]


@settings(max_examples=5, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_cluster_command_on_any_bytes(blob):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "nodes.txt").write_bytes(blob)
        out = command("hpcps.cluster", "--from-slurm", "--scontrol-output", d / "nodes.txt", "--out", d / "c.toml",
                      cwd=d)
        assert_clean(out, "hpcps.cluster")
        if out.status == 0:
            tomllib.loads((d / "c.toml").read_text())


@settings(max_examples=3, deadline=None)
@given(st.sampled_from([["--json", "{trace}"], ["--chrome", "{trace}"], ["--plot", "{trace}"], ["--range", "x"],
                        ["--json", "/dev/full"], ["--chrome", "/proc/version"]]))
def test_analyze_command_on_bad_outputs(args):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        from tests.unit.test_trace_file import write_trace
        write_trace(d / "t.h5")
        before = (d / "t.h5").read_bytes()
        out = command("hpcps.analyze", d / "t.h5", *[a.format(trace=d / "t.h5") for a in args], cwd=d)
        assert_clean(out, "hpcps.analyze")
        assert out.status == 2 and (d / "t.h5").read_bytes() == before
