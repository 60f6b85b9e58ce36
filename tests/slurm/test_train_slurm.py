"""slurm/train.sh against the real local Slurm: a training job warned of its time limit (SIGUSR1 to the
batch shell, what #SBATCH --signal=B:USR1@90 sends) checkpoints, stops and requeues itself; a job
requeued by scontrol while it runs checkpoints on its SIGTERM; both resume by themselves and end with
the parameters of a run never interrupted. A rank killed with SIGKILL ends the job, named by srun.

The job is digits with a 30 ms pause in each batch load (tests/fixtures/checkpoint_workloads.py): 150
iterations take some 5-15 s here, long enough to act while it runs."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from hpcps.ps.checkpoint import list_checkpoints, read_checkpoint
from hpcps.slurm.parse import classify_state
from hpcps.slurm.script import literal_filename
from tests.conftest import assert_no_leftovers, processes_mentioning, run_mpi
from tests.slurm.conftest import run_slurm, wait_for_job

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = 150


def slow_job(tmp_path: Path) -> Path:
    job = tmp_path / "slow.toml"
    job.write_text('name = "slow"\nworkload = "tests.fixtures.checkpoint_workloads:slow"\n'
                   '[model]\nhidden = 32\n[data]\nstep_sleep_s = 0.03\n'
                   '[optimizer]\nname = "sgd"\nlr = 0.1\nmomentum = 0.9\n'
                   f'[training]\nglobal_batch = 48\niterations = {ITERATIONS}\nlog_every = 25\n'
                   'checkpoint_every = 20\n')
    return job


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> np.ndarray:
    """The final parameters of the same job and schedule (3 ranks, the default schedule) never stopped."""
    tmp = tmp_path_factory.mktemp("reference")
    out = run_mpi(3, ["-m", "hpcps.train", "--job", str(slow_job(tmp)), "--no-trace", "--checkpoint", str(tmp / "ck")],
                  cwd=tmp)
    assert out.returncode == 0, out.stderr
    return read_checkpoint(tmp / "ck" / f"ckpt-{ITERATIONS:08d}.h5").params


def submit(local_slurm, tmp_path: Path, ckpt: Path) -> str:
    env = dict(local_slurm.env, HPCPS_CHECKPOINT=str(ckpt))
    r = run_slurm(local_slurm, "sbatch", "--parsable", "--nodes=2", "--ntasks=3", "--time=10",
                  f"--output={literal_filename(str(tmp_path))}/train-%j.out",
                  "slurm/train.sh", str(slow_job(tmp_path)), "--no-trace", cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def log_of(tmp_path: Path, job_id: str) -> str:
    path = tmp_path / f"train-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else "(no output file)"


def wait_until(what, condition, timeout_s: float, describe) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {timeout_s:.0f} s:\n{describe()}")
        time.sleep(0.2)


def restart_when_requeued(local_slurm, client, job_id: str, tmp_path: Path) -> None:
    """Wait until the job is pending again after a requeue, then let it start at once (Slurm makes a
    requeued job wait two minutes). slurmd refuses a job whose new credential is from the same second
    as the end of its last run: start it a few seconds after that end."""
    def pending():
        rec = client.show_job(job_id)
        return rec["JobState"] == "PENDING" and rec.get("Restarts") == "1"
    wait_until(f"job {job_id} not pending again", pending, 120,
               lambda: f"{client.show_job(job_id)}\n{log_of(tmp_path, job_id)}")
    rec = client.show_job(job_id)
    try:
        end = datetime.strptime(rec["EndTime"], "%Y-%m-%dT%H:%M:%S").timestamp()
    except (KeyError, ValueError):
        end = time.time()
    # A pending job's EndTime can be its expected end (start plus time limit), minutes ahead, rather
    # than its last run's: then that run has ended already.
    end = min(end, time.time())
    while time.time() < end + 2.5:
        time.sleep(0.1)
    r = run_slurm(local_slurm, "scontrol", "update", f"JobId={job_id}", "StartTime=now")
    # On a busy machine the job may have started again on its own meanwhile.
    assert r.returncode == 0 or client.show_job(job_id)["JobState"] != "PENDING", r.stderr


def finished_like_the_reference(client, job_id: str, tmp_path: Path, ckpt: Path, reference: np.ndarray) -> str:
    rec = wait_for_job(client, job_id, timeout_s=300)
    log = log_of(tmp_path, job_id)
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0" and rec["Restarts"] == "1", f"{rec}\n{log}"
    assert "(start 2, resuming from" in log and re.search(r"resuming from .*ckpt-\d+\.h5 after iteration \d+, under "
                                                          r"the same schedule", log), log
    assert re.search(rf"done: \d+ iterations \(\d+-{ITERATIONS}\)", log), log
    assert [it for it, _ in list_checkpoints(ckpt)][0] == ITERATIONS
    assert np.array_equal(read_checkpoint(ckpt / f"ckpt-{ITERATIONS:08d}.h5").params, reference)
    return log


def test_time_limit_signal_checkpoints_requeues_and_the_job_finishes(local_slurm, slurm_client, tmp_path, reference):
    ckpt = tmp_path / "ck"
    job_id = submit(local_slurm, tmp_path, ckpt)
    wait_until("no checkpoint", lambda: list_checkpoints(ckpt), 180, lambda: log_of(tmp_path, job_id))
    assert run_slurm(local_slurm, "scancel", "--batch", "--signal=USR1", job_id).returncode == 0
    restart_when_requeued(local_slurm, slurm_client, job_id, tmp_path)
    log = finished_like_the_reference(slurm_client, job_id, tmp_path, ckpt, reference)
    assert "hpcps-train: SIGUSR1 (time limit near): checkpoint and stop" in log
    stop = int(re.search(r"stopped after iteration (\d+) of 150 \(SIGUSR1\)", log).group(1))
    assert f"resuming from {ckpt}/ckpt-{stop:08d}.h5 after iteration {stop}" in log, log
    assert re.search(r"hpcps-train: stopped \(status (75|143)\); "
                     r"requeueing the job \(restart 1 of at most 3\)", log), log
    assert_no_leftovers(str(tmp_path))


def test_requeued_while_running_checkpoints_and_the_job_finishes(local_slurm, slurm_client, tmp_path, reference):
    ckpt = tmp_path / "ck"
    job_id = submit(local_slurm, tmp_path, ckpt)
    wait_until("no checkpoint", lambda: list_checkpoints(ckpt), 180, lambda: log_of(tmp_path, job_id))
    assert run_slurm(local_slurm, "scontrol", "requeue", job_id).returncode == 0
    restart_when_requeued(local_slurm, slurm_client, job_id, tmp_path)
    log = finished_like_the_reference(slurm_client, job_id, tmp_path, ckpt, reference)
    # SIGTERM, then SIGKILL after KillWait (2 s here): rank 0 had the time to checkpoint where it stood.
    stop = int(re.search(r"stopped after iteration (\d+) of 150 \(SIGTERM\)", log).group(1))
    assert f"resuming from {ckpt}/ckpt-{stop:08d}.h5 after iteration {stop}" in log, log
    assert_no_leftovers(str(tmp_path))


def test_a_killed_rank_ends_the_job_named(local_slurm, slurm_client, tmp_path):
    ckpt = tmp_path / "ck"
    job_id = submit(local_slurm, tmp_path, ckpt)
    wait_until("no checkpoint", lambda: list_checkpoints(ckpt), 180, lambda: log_of(tmp_path, job_id))
    line = next(ln for ln in log_of(tmp_path, job_id).splitlines() if ln.startswith("rank processes: "))
    victim = int(re.search(r"\b2=pid (\d+)", line).group(1))
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    rec = wait_for_job(slurm_client, job_id, timeout_s=60)
    ended = time.monotonic() - t0
    log = log_of(tmp_path, job_id)
    assert ended < 10 and classify_state(rec["JobState"]) == "FAILED", f"{ended:.1f} s {rec}\n{log}"
    assert re.search(r"task 2: Killed|rank 2 \(pid \d+\) on \S+ ended while the job ran", log), log
    assert list_checkpoints(ckpt) and not processes_mentioning(str(tmp_path))
