"""Real MPI trials on this machine: each trial is

    mpiexec -n RANKS python -m hpcps.train --job J --cluster C --schedule S --trace T.h5 --iterations K

which emulates the cluster (each rank behaves like the node it stands for). The trial's time and its
observations come from the trace; the first SKIP iterations (start-up) are left out. A trial that
exits non-zero, writes no usable trace or runs past the time limit is recorded with its reason.
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
from hpcps.tune.backends import TrialResult
from hpcps.tune.backends.common import (DEFAULT_ITERATIONS, ROOT, SKIP, failure_reason, last_error_line,  # noqa: F401
                                        rank_env, read_trace, train_argv)

KILL_GRACE_S = 5.0


def find_mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec") or shutil.which("mpirun")


class LocalBackend:
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
        root = str(ROOT)
        with (trial_dir / "output.log").open("w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return TrialResult(f"timeout: exceeded the trial time limit of {self.timeout_s:g} s",
                                   trace_path=str(trace_path) if trace_path.exists() else None,
                                   elapsed_s=time.perf_counter() - t0)
            finally:
                if proc.poll() is None:          # stopped by a signal while waiting
                    _kill_group(proc)
        output = (trial_dir / "output.log").read_text(errors="replace")
        if rc != 0:
            reason = failure_reason(output)
            return TrialResult(f"exit code {rc}: {reason}".strip(), trace_path=str(trace_path) if trace_path.exists()
                               else None, elapsed_s=time.perf_counter() - t0)
        return self.read_trace(trace_path, t0)

    def read_trace(self, trace_path: Path, t0: float) -> TrialResult:
        return read_trace(self.cluster, trace_path, self.skip, t0)


def _kill_group(proc: subprocess.Popen) -> None:
    """End mpiexec and every rank it started (they share its process group)."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
