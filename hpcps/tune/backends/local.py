"""Real MPI trials on this machine: each trial is

    mpiexec -n RANKS python -m hpcps.train --job J --cluster C --schedule S --trace T.h5 --iterations K

which emulates the cluster (each rank behaves like the node it stands for). The trial's time and its
observations come from the trace; the first SKIP iterations (start-up) are left out. A trial that
exits non-zero, writes no usable trace or runs past the time limit is recorded with its reason.

A trial's processes are its own and do not outlive the tuner:

- mpiexec starts in a session of its own (its process group: a timeout or a stop signals the group),
  with a death signal (Linux PR_SET_PDEATHSIG: SIGTERM when the tuner dies, however it dies; mpiexec
  then ends its ranks);
- every process of the trial carries TRIAL_ENV=<trial dir> in its environment, and the trial's
  directory keeps launch.json (mpiexec's pid and host). A resumed run ends whatever still carries the
  mark of a trial it is about to run again (end_orphans), and waits until it is gone, before the
  directory is cleared.

A stop request (SIGTERM to the tuner) ends the running trial the same way; it is not recorded.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import NodeSchedule, write_node_schedule
from hpcps.tune.backends.common import (
    DEFAULT_ITERATIONS,
    ROOT,
    SKIP,
    failure_reason,
    rank_env,
    read_trace,
    run_warnings,
    train_argv,
)
from hpcps.tune.trials import Backend, Stop, StopRequested, TrialResult

log = logging.getLogger(__name__)

KILL_GRACE_S = 5.0               # after SIGTERM, before SIGKILL; and after SIGKILL, before giving up
POLL_S = 0.5                     # how often a running trial checks for a stop request
TRIAL_ENV = "HPCPS_TUNE_TRIAL"   # marks every process of a trial with its directory
PR_SET_PDEATHSIG = 1


def find_mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec") or shutil.which("mpirun")


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A subprocess preexec_fn that has the kernel send sig to the child when this process dies (Linux);
    None elsewhere. The child exits at once if this process died before the death signal was set."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(128 + sig)
    return preexec


class LocalBackend(Backend):
    name = "local"

    def __init__(self, cluster: Cluster, job, job_path: Path, cluster_path: Path, *,
                 iterations: int = DEFAULT_ITERATIONS, timeout_s: float = 600.0, mpiexec: str | None = None,
                 python: str = sys.executable, env: dict[str, str] | None = None, skip: int = SKIP,
                 step_costs: Path | None = None):
        """step_costs: the file in which the trials share their emulated step costs (hpcps.train
        --step-costs): a step of one batch size is then charged alike in every trial, so that trials
        differ by their schedules, not by their start-up timings (the tuner gives RUN_DIR/step_costs.json)."""
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
        self.step_costs = None if step_costs is None else Path(step_costs).resolve()

    def watch_stop(self, stop_requested: StopRequested) -> None:
        self._stop_requested = stop_requested

    def command(self, schedule_path: Path, trace_path: Path, n_ranks: int, sync: str | None = None) -> list[str]:
        return [self.mpiexec or "mpiexec", "-n", str(n_ranks),
                *train_argv(self.python, self.job_path, self.cluster_path, schedule_path, trace_path, self.iterations,
                            sync, self.step_costs)]

    def run_trial(self, trial_dir: Path, schedule: NodeSchedule, trial: int, sync: str | None = None) -> TrialResult:
        t0 = time.perf_counter()
        trial_dir = Path(trial_dir).resolve()
        if self.mpiexec is None:
            return TrialResult("error: no mpiexec found (install mpich, or put mpiexec on PATH)")
        sched_path = trial_dir / "schedule.toml"
        write_node_schedule(schedule, sched_path)
        trace_path = trial_dir / "trace.h5"
        cmd = self.command(sched_path, trace_path, schedule.n_ranks, sync)
        (trial_dir / "command.txt").write_text(shlex.join(cmd) + "\n")
        env = rank_env(extra={**self.env, TRIAL_ENV: str(trial_dir)})
        with (trial_dir / "output.log").open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
                                    start_new_session=True, preexec_fn=die_with_parent())
            try:
                (trial_dir / "launch.json").write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(),
                                                                   TRIAL_ENV: str(trial_dir)}) + "\n")
                ended = self._wait(proc)
            finally:
                if proc.poll() is None:          # a timeout, a stop, or an exception while waiting
                    _kill_group(proc)
                    end_processes(marked_processes(str(trial_dir)))     # ranks a stuck mpiexec left
        trace = str(trace_path) if trace_path.exists() else None
        if ended is not None:
            return TrialResult(ended, trace_path=trace, elapsed_s=time.perf_counter() - t0)
        if proc.returncode != 0:
            reason = failure_reason((trial_dir / "output.log").read_text(errors="replace"))
            return TrialResult(f"exit code {proc.returncode}: {reason}".strip(), trace_path=trace,
                               elapsed_s=time.perf_counter() - t0)
        result = read_trace(self.cluster, trace_path, self.skip, t0)
        return replace(result, warnings=run_warnings((trial_dir / "output.log").read_text(errors="replace")))

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

    def end_orphans(self, trial_dir: Path) -> None:
        """End the processes of an earlier attempt at this trial (marked with its directory) and wait until
        they are gone; Stop if some cannot be ended."""
        trial_dir = Path(trial_dir).resolve()
        launch = _read_launch(trial_dir)
        if launch.get("host") not in (None, socket.gethostname()):
            log.warning("%s was launched on %s: its processes there cannot be checked from here", trial_dir,
                        launch["host"])
            return
        pids = marked_processes(str(trial_dir))
        if not pids:
            return
        log.warning("ending %d process(es) left running by an earlier attempt at %s (mpiexec pid %s)", len(pids),
                    trial_dir, launch.get("pid", "?"))
        left = end_processes(pids)
        if left:
            raise Stop(f"process(es) {', '.join(map(str, left))} of an earlier attempt at {trial_dir} would not end")


def _read_launch(trial_dir: Path) -> dict:
    try:
        return json.loads((trial_dir / "launch.json").read_text())
    except (OSError, ValueError):
        return {}


def marked_processes(trial_dir: str) -> list[int]:
    """Processes (other than this one) whose environment carries TRIAL_ENV=trial_dir (Linux /proc)."""
    mark = f"{TRIAL_ENV}={trial_dir}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:                          # gone, or not ours to read
            continue
        if mark in env.split(b"\0") and _alive(pid):
            found.append(pid)
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to collect it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def end_processes(pids: Iterable[int], grace_s: float = KILL_GRACE_S) -> list[int]:
    """SIGTERM, then SIGKILL after grace_s; returns the pids still alive grace_s after that."""
    left = list(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while left and time.monotonic() < deadline:
            left = [p for p in left if _alive(p)]
            time.sleep(0.05)
        left = [p for p in left if _alive(p)]
        if not left:
            break
    return left


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
