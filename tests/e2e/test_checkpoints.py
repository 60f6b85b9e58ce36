"""Checkpoints as a user meets them: python -m hpcps.train --checkpoint / --resume under mpiexec, a run
resumed on another rank count, bad input, a run that diverges, a rank killed, a stop on a signal, and
a writer killed in the middle of a file."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hpcps.config import load_job
from hpcps.ps.checkpoint import (
    Checkpoint,
    identity_of,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from tests.conftest import MPIEXEC, ROOT, assert_no_leftovers, mpi_env, run_mpi

DIGITS = """
name = "digits-ckpt"
workload = "digits"
[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9
[training]
global_batch = 64
epochs = 8
log_every = 22
[schedule]
servers = [0, 3]
[[schedule.workers]]
rank = 1
batch = 8
[[schedule.workers]]
rank = 2
batch = 16
[[schedule.workers]]
rank = 3
batch = 40
"""

OTHER_SCHEDULE = """
servers = [1]
[[workers]]
rank = 0
batch = 24
[[workers]]
rank = 2
batch = 40
"""


def accuracy(out: str) -> float:
    return float(re.search(r"test_accuracy (\d\.\d+)", out).group(1))


def test_resumed_on_another_rank_count_reaches_the_same_accuracy(tmp_path):
    """8 epochs of digits on 4 ranks (servers 0 and 3, three workers), straight; and cut after 88 of
    its 176 iterations, then resumed on 3 ranks with another server and two workers of other batches."""
    job = tmp_path / "digits.toml"
    job.write_text(DIGITS)
    other = tmp_path / "other.toml"
    other.write_text(OTHER_SCHEDULE)
    straight = run_mpi(4, ["-m", "hpcps.train", "--job", str(job), "--no-trace"])
    assert straight.returncode == 0, straight.stderr
    ckpt = tmp_path / "ckpt"
    first = run_mpi(4, ["-m", "hpcps.train", "--job", str(job), "--no-trace", "--iterations", "88",
                        "--checkpoint", str(ckpt)])
    assert first.returncode == 0, first.stderr
    resumed = run_mpi(3, ["-m", "hpcps.train", "--job", str(job), "--no-trace", "--resume", str(ckpt),
                          "--schedule", str(other)])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {ckpt}/ckpt-00000088.h5 after iteration 88, under another schedule (it ran 4 ranks" \
        in resumed.stdout
    assert "1 servers, 2 workers" in resumed.stdout and "done: 88 iterations (89-176)" in resumed.stdout
    assert accuracy(straight.stdout) >= 0.95
    assert abs(accuracy(resumed.stdout) - accuracy(straight.stdout)) <= 0.005, (straight.stdout, resumed.stdout)
    assert [it for it, _ in list_checkpoints(ckpt)] == [176, 88]


def small_job(tmp_path: Path, hidden: int = 32, extra: str = "") -> Path:
    job = tmp_path / f"job{hidden}.toml"
    job.write_text(f'name = "small"\nworkload = "digits"\n[model]\nhidden = {hidden}\n[optimizer]\nname = "sgd"\n'
                   f'lr = 0.1\nmomentum = 0.9\n[training]\nglobal_batch = 48\niterations = 40\nlog_every = 10\n{extra}')
    return job


def a_checkpoint(directory: Path, job_path: Path, n_params: int, iteration: int = 10) -> Path:
    rng = np.random.default_rng(0)
    ckpt = Checkpoint(iteration, "small", identity_of(load_job(job_path)),
                      {"n_ranks": 3, "servers": [0], "workers": [[0, 16], [1, 16], [2, 16]], "codecs": ["none"] * 3},
                      rng.standard_normal(n_params).astype(np.float32),
                      {"momentum_buffer": np.zeros(n_params, np.float32)})
    return write_checkpoint(directory, ckpt).path


def listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


@pytest.mark.parametrize("case", ["missing-dir", "corrupt", "other-model", "dir-holds-checkpoints", "past-the-end",
                                  "ssp"])
def test_bad_resume_input_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    job = small_job(tmp_path)
    ckdir = tmp_path / "ck"
    args = ["-m", "hpcps.train", "--job", str(job)]
    if case == "missing-dir":
        args += ["--resume", str(tmp_path / "nowhere")]
        words = f"{tmp_path / 'nowhere'}: no such directory"
    elif case == "corrupt":
        ckdir.mkdir()
        good = a_checkpoint(ckdir, job, 2410)
        good.write_bytes(good.read_bytes()[:3000])
        args += ["--resume", str(ckdir)]
        words = f"{ckdir}: no complete checkpoint (ckpt-NNNNNNNN.h5): ckpt-00000010.h5: unreadable"
    elif case == "other-model":
        a_checkpoint(ckdir, small_job(tmp_path, hidden=64), 4810)
        args += ["--resume", str(ckdir)]
        words = 'written by another job: its model is {"hidden": 64}, this job\'s is {"hidden": 32}'
    elif case == "dir-holds-checkpoints":
        a_checkpoint(ckdir, job, 2410)
        args += ["--checkpoint", str(ckdir)]
        words = f"already holds checkpoints (newest ckpt-00000010.h5); give --resume {ckdir}"
    else:
        a_checkpoint(ckdir, job, 2410, iteration=50)
        args += ["--resume", str(ckdir)]
        words = "is after iteration 50, past this run's 40 iterations"
    before = listing(tmp_path)
    out = run_mpi(3, args, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("hpcps.train: error: ") and words in errors[0], out.stderr
    assert listing(tmp_path) == before                 # no trace, no checkpoint, nothing moved
    assert_no_leftovers(str(tmp_path))


def test_a_non_finite_loss_ends_the_job_naming_iteration_rank_and_checkpoint(tmp_path):
    job = tmp_path / "nan.toml"
    job.write_text('name = "nan"\nworkload = "tests.fixtures.checkpoint_workloads:nan"\n'
                   '[data]\nnan_rank = 2\nnan_call = 25\n[optimizer]\nname = "sgd"\nlr = 0.1\n'
                   '[training]\nglobal_batch = 48\niterations = 1000\ncheckpoint_every = 10\n')
    ckdir = tmp_path / "ck"
    t0 = time.monotonic()
    out = run_mpi(3, ["-m", "hpcps.train", "--job", str(job), "--no-trace", "--checkpoint", str(ckdir)], timeout=120)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if "TrainingDiverged" in ln]
    assert lines, out.stderr
    pattern = (r"error on rank (\d) .*: TrainingDiverged: non-finite (loss \(nan\)|aggregated gradient in piece 0 "
               r".*) in iteration 25 on rank (\d); last good checkpoint: " + re.escape(str(ckdir / "ckpt-00000020.h5"))
               + r" \(after iteration 20\)$")
    for ln in lines:
        m = re.search(pattern, ln)
        assert m and m.group(1) == m.group(3) and m.group(3) in "02", ln   # the worker, or the server
    assert "Traceback" not in out.stderr
    assert time.monotonic() - t0 < 60
    ckpt, skipped = latest_checkpoint(ckdir)
    assert ckpt.iteration == 20 and not skipped and np.isfinite(ckpt.params).all()
    assert_no_leftovers(str(tmp_path))


@pytest.mark.parametrize("sync", ["ssp", "asp"])
def test_a_non_finite_gradient_under_ssp_and_asp_ends_the_job_naming_its_step(tmp_path, sync):
    """Only the gradient is NaN (the loss stays finite): the server finds it before the step, names the
    step the push belongs to (not where the server's own loop was) and the last good checkpoint."""
    job = tmp_path / "nan.toml"
    job.write_text('name = "nan"\nworkload = "tests.fixtures.checkpoint_workloads:nan"\n'
                   '[data]\nnan_rank = 2\nnan_call = 25\nnan_in = "gradient"\n[optimizer]\nname = "sgd"\nlr = 0.1\n'
                   '[training]\nglobal_batch = 48\niterations = 1000\ncheckpoint_every = 10\n'
                   f'sync = "{sync}"\n' + ('staleness = 1\n' if sync == "ssp" else ""))
    ckdir = tmp_path / "ck"
    out = run_mpi(3, ["-m", "hpcps.train", "--job", str(job), "--no-trace", "--checkpoint", str(ckdir)], timeout=120)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if "TrainingDiverged" in ln]
    assert lines, out.stderr
    what = "aggregated gradient" if sync == "ssp" else "gradient of worker 2"
    pattern = (rf"error on rank (\d) .*: TrainingDiverged: non-finite {what} in piece \d+ .* in iteration 25 on "
               r"rank (\d); last good checkpoint: " + re.escape(str(ckdir / "ckpt-00000020.h5"))
               + r" \(after iteration 20\)$")
    for ln in lines:
        m = re.search(pattern, ln)
        assert m and m.group(1) == m.group(2), ln
    assert "Traceback" not in out.stderr
    ckpt, skipped = latest_checkpoint(ckdir)
    assert ckpt.iteration == 20 and not skipped and np.isfinite(ckpt.params).all()
    assert_no_leftovers(str(tmp_path))


def slow_job(tmp_path: Path, iterations: int, every: int, sleep_s: float = 0.02, sync: str = "bsp") -> Path:
    job = tmp_path / "slow.toml"
    job.write_text('name = "slow"\nworkload = "tests.fixtures.checkpoint_workloads:slow"\n'
                   f'[model]\nhidden = 32\n[data]\nstep_sleep_s = {sleep_s}\n'
                   '[optimizer]\nname = "adam"\nlr = 0.003\n'
                   f'[training]\nglobal_batch = 48\niterations = {iterations}\nlog_every = 5\n'
                   f'checkpoint_every = {every}\nsync = "{sync}"\n')
    return job


class Follow:
    """A running mpiexec job whose output is read line by line as it comes."""

    def __init__(self, n: int, args: list[str], cwd: Path):
        self.proc = subprocess.Popen([MPIEXEC, "-n", str(n), sys.executable, *args], cwd=cwd, env=mpi_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[str] = []

    def until(self, pattern: str, timeout_s: float = 180) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            m = re.search(pattern, line)
            if m:
                return m
        self.proc.kill()
        pytest.fail(f"never saw {pattern!r}:\n" + "\n".join(self.lines))

    def pid_of(self, rank: int) -> int:
        line = next(ln for ln in self.lines if ln.startswith("rank processes: "))
        return int(re.search(rf"\b{rank}=pid (\d+)", line).group(1))

    def finish(self, timeout_s: float = 120) -> str:
        rest, _ = self.proc.communicate(timeout=timeout_s)
        self.lines += rest.splitlines()
        return "\n".join(self.lines)


def test_a_killed_worker_ends_the_job_and_resume_loses_at_most_one_interval(tmp_path):
    job = slow_job(tmp_path, iterations=100000, every=20)
    ckdir = tmp_path / "ck"
    run = Follow(3, ["-m", "hpcps.train", "--job", str(job), "--no-trace", "--checkpoint", str(ckdir)], tmp_path)
    run.until(r"checkpoint .*ckpt-00000040\.h5 after iteration 40")
    last = int(run.until(r"iter\s+(\d+)/").group(1))
    victim = run.pid_of(2)
    os.kill(victim, signal.SIGKILL)
    t_kill = time.monotonic()
    out = run.finish(timeout_s=60)
    assert time.monotonic() - t_kill < 10, out
    assert run.proc.returncode != 0
    # Whichever comes first names it: the rank watch (hpcps/comm/watch.py) names the dead rank and its
    # process and ends the job with MPI_Abort, or mpiexec kills the other ranks at once and names a
    # process id, not always the dead rank's, which the run's first line maps to a rank (seen both ways
    # under load). Under Slurm, srun names the rank (tests/slurm/test_train_slurm.py).
    pids = [int(p) for p in re.findall(r"=pid (\d+)", next(ln for ln in run.lines if "rank processes" in ln))]
    by_mpiexec = re.search(r"PID (\d+) RUNNING AT", out)
    assert (f"rank 2 (pid {victim}) on " in out and "ended while the job ran" in out) or \
        (by_mpiexec is not None and int(by_mpiexec.group(1)) in pids), out
    kept, skipped = latest_checkpoint(ckdir)
    assert not skipped and kept.iteration >= last - 20, (kept.iteration, last)
    resumed = run_mpi(3, ["-m", "hpcps.train", "--job", str(job), "--no-trace", "--resume", str(ckdir),
                          "--iterations", str(kept.iteration + 10)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {ckdir}/ckpt-{kept.iteration:08d}.h5 after iteration {kept.iteration}, under the same " \
           "schedule" in resumed.stdout
    assert f"done: 10 iterations ({kept.iteration + 1}-{kept.iteration + 10})" in resumed.stdout
    assert_no_leftovers(str(tmp_path))


def stopped_by_sigusr1(job: Path, ckdir: Path, tmp_path: Path, when: str, also_rank_1: bool = False) -> int:
    """Run job on 3 ranks with checkpoints into ckdir, send rank 0 SIGUSR1 after iteration 20 (and rank 1,
    which must ignore it), and return the iteration the run stopped after: status 75, the stop announced
    for `when`, the last good checkpoint named."""
    run = Follow(3, ["-m", "hpcps.train", "--job", str(job), "--no-trace", "--checkpoint", str(ckdir)], tmp_path)
    run.until(r"iter\s+20/120")
    os.kill(run.pid_of(0), signal.SIGUSR1)
    if also_rank_1:
        os.kill(run.pid_of(1), signal.SIGUSR1)      # ignored: only rank 0 acts on it
    out = run.finish()
    assert run.proc.returncode == 75, out
    assert f"SIGUSR1: checkpoint at {when}, then stop" in out
    return int(re.search(r"stopped after iteration (\d+) of 120 \(SIGUSR1\): last good checkpoint: "
                         + re.escape(str(ckdir)) + r"/ckpt-(\d+)\.h5", out).group(1))


def test_sigusr1_checkpoints_and_stops_and_the_resumed_run_ends_bit_for_bit(tmp_path):
    """SIGUSR1 to rank 0 (what slurm/train.sh forwards at the time limit): a checkpoint at the next
    boundary, status 75; resumed, the run ends with the parameters of a run never stopped."""
    job = slow_job(tmp_path, iterations=120, every=0, sleep_s=0.03)
    ref = run_mpi(3, ["-m", "hpcps.train", "--job", str(job), "--no-trace", "--checkpoint", str(tmp_path / "ref")],
                  cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    ckdir = tmp_path / "ck"
    stop = stopped_by_sigusr1(job, ckdir, tmp_path, "the next iteration boundary", also_rank_1=True)
    assert 20 < stop < 120 and [it for it, _ in list_checkpoints(ckdir)] == [stop]
    resumed = run_mpi(3, ["-m", "hpcps.train", "--job", str(job), "--no-trace", "--resume", str(ckdir)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = read_checkpoint(tmp_path / "ref" / "ckpt-00000120.h5")
    b = read_checkpoint(ckdir / "ckpt-00000120.h5")
    assert np.array_equal(a.params, b.params)
    assert all(np.array_equal(a.optimizer_vectors[k], b.optimizer_vectors[k]) for k in a.optimizer_vectors)
    assert_no_leftovers(str(tmp_path))


def test_sigusr1_under_asp_checkpoints_where_every_rank_settles_and_the_run_resumes(tmp_path):
    """Under asp ranks reach a boundary at different times: rank 0's decision reaches every rank 16
    boundaries on (ASP_FLAG_LAG), where every rank settles (every push before applied) and the
    checkpoint is written; resumed, the run trains to its end."""
    job = slow_job(tmp_path, iterations=120, every=0, sleep_s=0.03, sync="asp")
    ckdir = tmp_path / "ck"
    stop = stopped_by_sigusr1(job, ckdir, tmp_path, "the boundary 16 iterations on")
    assert 36 < stop < 120 and [it for it, _ in list_checkpoints(ckdir)] == [stop]
    kept = read_checkpoint(ckdir / f"ckpt-{stop:08d}.h5")
    assert kept.schedule["sync"] == "asp"
    assert int(kept.optimizer_scalars["step"]) == len(kept.schedule["workers"]) * stop    # every push, once
    resumed = run_mpi(3, ["-m", "hpcps.train", "--job", str(job), "--no-trace", "--resume", str(ckdir)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"done: {120 - stop} iterations ({stop + 1}-120)" in resumed.stdout
    assert accuracy(resumed.stdout) > 0.8, resumed.stdout
    assert [it for it, _ in list_checkpoints(ckdir)] == [120, stop]
    assert_no_leftovers(str(tmp_path))


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from hpcps.ps.checkpoint import Checkpoint, write_checkpoint
    n = int(sys.argv[2])
    for it in range(1, 1000):
        v = np.full(n, it, dtype=np.float32)
        write_checkpoint(sys.argv[1], Checkpoint(it, "w", {}, {"n_ranks": 1, "servers": [0], "workers": []}, v,
                                                 {"exp_avg": v, "exp_avg_sq": v}))
""")


@pytest.mark.parametrize("delay_s", [0.0, 0.05, 0.2])
def test_a_writer_killed_mid_file_never_leaves_a_checkpoint_to_resume_from(tmp_path, delay_s):
    """A process writing 96 MB checkpoints one after another is killed (SIGKILL) while a file is being
    written (its temporary file exists): the newest checkpoint found is the previous, whole one."""
    d = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(d), str(8 << 20)], cwd=ROOT, env=mpi_env())
    try:
        deadline = time.monotonic() + 120
        while not (d.is_dir() and any(p.name.startswith(".ckpt-00000002.h5.") for p in d.iterdir())):
            assert time.monotonic() < deadline and proc.poll() is None, "the writer never started iteration 2"
            time.sleep(0.005)
        time.sleep(delay_s)
        # Freeze the writer, look, and go on until it is caught with a temporary file open: on a fast disk a
        # 96 MB file can be renamed within the delay, and a kill between two files tests nothing.
        while True:
            proc.send_signal(signal.SIGSTOP)
            busy = [p.name for p in d.iterdir() if p.name.endswith(".tmp")]
            if busy:
                break
            proc.send_signal(signal.SIGCONT)
            assert time.monotonic() < deadline and proc.poll() is None, "the writer was never caught mid-file"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    ckpt, skipped = latest_checkpoint(d)
    assert busy and not skipped, (busy, skipped)       # killed mid-file; no file by a checkpoint's name is partial
    assert ckpt.iteration == max(it for it, _ in list_checkpoints(d)) >= 1
    assert (ckpt.params == ckpt.iteration).all() and (ckpt.optimizer_vectors["exp_avg_sq"] == ckpt.iteration).all()
