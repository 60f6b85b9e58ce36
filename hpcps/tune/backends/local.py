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

import numpy as np

from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import NodeSchedule, write_node_schedule
from hpcps.tune.backends import TrialResult

DEFAULT_ITERATIONS = 20
SKIP = 2
KILL_GRACE_S = 5.0


def find_mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec") or shutil.which("mpirun")


def last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "Error" in ln or "Traceback" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else ""


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
        return [self.mpiexec or "mpiexec", "-n", str(n_ranks), self.python, "-m", "hpcps.train",
                "--job", str(self.job_path), "--cluster", str(self.cluster_path), "--schedule", str(schedule_path),
                "--trace", str(trace_path), "--iterations", str(self.iterations), "--quiet"]

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
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(self.env)
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
            reason = last_error_line(output)
            if ("out of memory" in output.lower() or "MemoryError" in output) and "memory" not in reason.lower():
                reason = "out of memory: " + reason
            return TrialResult(f"exit code {rc}: {reason}".strip(), trace_path=str(trace_path) if trace_path.exists()
                               else None, elapsed_s=time.perf_counter() - t0)
        return self.read_trace(trace_path, t0)

    def read_trace(self, trace_path: Path, t0: float) -> TrialResult:
        from hpcps.trace import TraceError, open_trace
        from hpcps.tune.observations import from_trace
        try:
            tr = open_trace(trace_path)
        except TraceError as e:
            return TrialResult(f"error: unusable trace: {e}", elapsed_s=time.perf_counter() - t0)
        its = tr.iterations
        its = its[its["iteration"] >= self.skip]
        if len(its) == 0:
            return TrialResult("error: the trace holds no iteration past start-up", trace_path=str(trace_path),
                               elapsed_s=time.perf_counter() - t0)
        times = tuple(float(x) for x in its["time_s"])
        try:
            obs = from_trace(self.cluster, tr, skip_iterations=self.skip)
        except ValueError as e:
            return TrialResult(f"error: {e}", trace_path=str(trace_path), elapsed_s=time.perf_counter() - t0)
        return TrialResult("ok", float(np.mean(times)), obs, str(trace_path), times, time.perf_counter() - t0)


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
