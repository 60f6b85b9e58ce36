"""Naming a rank whose process ended without a word (SIGKILL, the OOM killer).

Such a rank cannot report itself. What the launcher does about it differs:

- srun names the task ("srun: error: n3: task 2: Killed"); with --kill-on-bad-exit (slurm/train.sh)
  it ends the other tasks, but without it (Slurm's default) they run on, and wait forever for messages
  from the dead rank.
- MPICH's mpiexec (hydra) kills every other rank within some 20 ms, even with -disable-auto-cleanup,
  and prints a "BAD TERMINATION" banner with a process id: not always the dead rank's (in 3 of 5 runs
  here it gave another rank's). hpcps.train's "rank processes" line maps process ids to ranks.

So on each node the lowest local rank watches the processes of the node's other ranks (Linux's /proc,
every INTERVAL_S) and, when one is gone while the job still runs, says which rank it was and ends the
job with MPI_Abort: under srun without --kill-on-bad-exit, or any launcher that leaves the others
running, the job ends naming the rank instead of hanging.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

from mpi4py import MPI

INTERVAL_S = 0.1


def process_alive(pid: int) -> bool:
    """Whether pid is a running (not a zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][:1] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


class RankWatch:
    """Collective: build on every rank; stop() on every rank once no rank may end early any more."""

    def __init__(self, comm: MPI.Comm, tool: str, interval_s: float = INTERVAL_S, abort=None):
        self.comm, self.tool, self.interval_s = comm, tool, interval_s
        self.abort = abort or (lambda: comm.Abort(1))
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            peers = local.allgather((comm.Get_rank(), os.getpid()))
            watching = local.Get_rank() == 0
        finally:
            local.Free()
        self.peers = [(r, pid) for r, pid in peers if pid != os.getpid()]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if watching and self.peers and os.path.isdir("/proc"):
            self.start()

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="hpcps-rank-watch", daemon=True)
        thread.start()
        self._thread = thread

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            gone = [(r, pid) for r, pid in self.peers if not process_alive(pid)]
            if gone and not self._stop.is_set():
                names = ", ".join(f"rank {r} (pid {pid})" for r, pid in gone)
                sys.stderr.write(f"{self.tool}: {names} on {socket.gethostname()} ended while the job ran "
                                 "(killed?); ending the job\n")
                sys.stderr.flush()
                self.abort()
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
