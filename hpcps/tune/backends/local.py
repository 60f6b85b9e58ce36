"""Real MPI trials on this machine: each trial is

    mpiexec -n RANKS python -m hpcps.train --job J --cluster C --schedule S --trace T.h5 --iterations K

which emulates the cluster (each rank behaves like the node it stands for). The trial's time and its
observations come from the trace; the first SKIP iterations (start-up) are left out. A trial that
exits non-zero, writes no usable trace or runs past the time limit is recorded with its reason.

mpiexec starts in a session of its own (its process group): a timeout or a stop request (SIGTERM to
the tuner) signals the group, and mpiexec ends its ranks. A trial cut short by a stop is not recorded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import NodeSchedule, write_node_schedule
from hpcps.tune.backends.common import DEFAULT_ITERATIONS, ROOT, SKIP, failure_reason, rank_env, read_trace, train_argv
from hpcps.tune.trials import Backend, StopRequested, TrialResult

KILL_GRACE_S = 5.0               # after SIGTERM, before SIGKILL
POLL_S = 0.5                     # how often a running trial checks for a stop request


def find_mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec") or shutil.which("mpirun")


class LocalBackend(Backend):
    name = "local"

    def __init__(self, cluster: Cluster, job, job_path: Path, cluster_path: Path, *,
                 iterations: int = DEFAULT_ITERATIONS, timeout_s: float = 600.0, mpiexec: str | None = None,
                 python: str = sys.executable, env: dict[str, str] | None = None, skip: int = SKIP):
        self.cluster = cluster
        self.job = job
        self.job_path = Path(job_path).resolve()
        self.cluster_path = Path(cluster_path).resolve()
        self.iterations = iterations
        self.timeout_s = timeout_s
        self.mpiexec = mpiexec or find_mpiexec()
        self.python = python
        self.env = env or {}
        self.skip = min(skip, max(0, iterations - 1))
        self._stop_requested: StopRequested = lambda: None

    def watch_stop(self, stop_requested: StopRequested) -> None:
        self._stop_requested = stop_requested

    def command(self, schedule_path: Path, trace_path: Path, n_ranks: int) -> list[str]:
        return [self.mpiexec or "mpiexec", "-n", str(n_ranks),
                *train_argv(self.python, self.job_path, self.cluster_path, schedule_path, trace_path, self.iterations)]

    def run_trial(self, trial_dir: Path, schedule: NodeSchedule, trial: int) -> TrialResult:
        t0 = time.perf_counter()
        trial_dir = Path(trial_dir).resolve()
        if self.mpiexec is None:
            return TrialResult("error: no mpiexec found (install mpich, or put mpiexec on PATH)")
        sched_path = trial_dir / "schedule.toml"
        write_node_schedule(schedule, sched_path)
        trace_path = trial_dir / "trace.h5"
        cmd = self.command(sched_path, trace_path, schedule.n_ranks)
        (trial_dir / "command.txt").write_text(" ".join(cmd) + "\n")
        env = rank_env(extra=self.env)
        with (trial_dir / "output.log").open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
                                    start_new_session=True)
            try:
                ended = self._wait(proc)
            finally:
                if proc.poll() is None:          # a timeout, a stop, or an exception while waiting
                    _kill_group(proc)
        trace = str(trace_path) if trace_path.exists() else None
        if ended is not None:
            return TrialResult(ended, trace_path=trace, elapsed_s=time.perf_counter() - t0)
        if proc.returncode != 0:
            reason = failure_reason((trial_dir / "output.log").read_text(errors="replace"))
            return TrialResult(f"exit code {proc.returncode}: {reason}".strip(), trace_path=trace,
                               elapsed_s=time.perf_counter() - t0)
        return read_trace(self.cluster, trace_path, self.skip, t0)

    def _wait(self, proc: subprocess.Popen) -> str | None:
        """Until the trial exits (None), or why it must end first: its time limit, a stop request."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                proc.wait(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
                return None
            except subprocess.TimeoutExpired:
                pass
            why = self._stop_requested()
            if why:
                return f"cancelled: the tuner was stopped ({why})"
            if time.monotonic() >= deadline:
                return f"timeout: exceeded the trial time limit of {self.timeout_s:g} s"


def _kill_group(proc: subprocess.Popen) -> None:
    """End mpiexec and everything in its process group (it ends its ranks, which have sessions of their own)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue
