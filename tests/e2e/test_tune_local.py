"""The tuner's local backend with real MPI trials: killing the tuner (kill -9) ends the trial it was
running, and an immediate --resume runs that trial again alone in its directory."""

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcps.tune.backends.local import end_processes, marked_processes
from tests.conftest import ROOT, mpi_env


@pytest.fixture
def trial_dir(tmp_path):
    """The first trial's directory; whatever still runs marked with it is ended after the test."""
    path = str((tmp_path / "run" / "trials" / "0001").resolve())
    yield path
    end_processes(marked_processes(path))


def test_kill_9_of_the_tuner_ends_its_trial_and_resume_reruns_it(tmp_path, trial_dir):
    out = tmp_path / "run"
    # A trial far longer than the test: it ends by the kill, then by its time limit.
    cmd = [sys.executable, "-m", "hpcps.tune", "--job", str(ROOT / "jobs/hetero8.toml"), "--backend", "local",
           "--strategy", "random", "--budget", "1", "--iterations", "100000", "--timeout", "25", "--out", str(out)]
    tuner = subprocess.Popen(cmd, cwd=ROOT, env=mpi_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(marked_processes(trial_dir)) < 4:        # mpiexec, its proxy, ranks
            assert time.monotonic() < deadline and tuner.poll() is None, "the trial's ranks never started"
            time.sleep(0.2)
        time.sleep(2)
    finally:
        tuner.kill()
        tuner.wait()
    deadline = time.monotonic() + 20
    while (left := marked_processes(trial_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"the killed tuner's trial still runs: {left}"
    resumed = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=mpi_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    rows = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
    assert [r["trial"] for r in rows] == ["1"] and rows[0]["status"].startswith("timeout: "), rows
    assert not marked_processes(trial_dir)
    assert Path(trial_dir, "output.log").is_file()


def test_the_mode_the_tuner_chooses_is_the_mode_the_trial_runs_and_is_timed_by(tmp_path):
    """--syncs bsp,asp with real MPI trials: the random search's second trial (seed 6) is asp; its ranks
    run asp (the trace says so) and its time is one global batch at the workers' own rates, not the
    iteration rows' first-starter gaps."""
    import numpy as np

    from hpcps.trace import open_trace
    from hpcps.trace.derive import own_step_rates
    from hpcps.tune.backends.common import SKIP
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hpcps.tune", "--job", str(ROOT / "jobs/default.toml"), "--cluster",
           str(ROOT / "jobs/clusters/uniform4.toml"), "--backend", "local", "--strategy", "random", "--budget", "2",
           "--seed", "6", "--syncs", "bsp,asp", "--iterations", "12", "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=mpi_env(), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    assert rows[0]["schedule"].endswith("sync=bsp") and rows[1]["schedule"].endswith("sync=asp"), rows
    tr = open_trace(out / "trials" / "0002" / "trace.h5")
    assert tr.attrs["sync"] == "asp"
    batch = dict(zip(tr.ranks["rank"].tolist(), tr.ranks["batch"].tolist()))
    rate = sum(own_step_rates(tr.events, {w: batch[w] for w in tr.workers.tolist()}, SKIP).values())
    assert float(rows[1]["iteration_time_s"]) == pytest.approx(tr.global_batch / rate, rel=1e-5)
    assert open_trace(out / "trials" / "0001" / "trace.h5").attrs["sync"] == "bsp"
    assert np.isfinite(float(rows[0]["iteration_time_s"]))
