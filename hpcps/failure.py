"""Why a launched run failed, from its output: one line for trials.csv.

The output of an MPI run that failed holds the program's own message (a Python exception,
"hpcps.train: error: ..."), followed by what the launcher says as it tears the job down (srun's "task 1:
Killed", slurmstepd's "CANCELLED AT", MPICH's "BAD TERMINATION" banner and "application called
MPI_Abort"). The program's line says why; the launcher's lines only say that. Used by the local
backend (mpiexec) and by hpcps.slurm's launcher (srun, sbatch).

    error_line(lines)             the line most likely to say why
    failure_reason(output)        error_line, marked "out of memory: " when the output says so
    mark_out_of_memory(r, output) that mark on a reason found elsewhere
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

MAX_CHARS = 300                  # of the line kept
_ERROR_WORDS = ("error", "exception", "traceback", "cancelled", "killed", "abort")
_LAUNCHER_PREFIXES = ("srun:", "slurmstepd", "salloc:", "sbatch:", "[mpiexec@", "[proxy:", "=", "your application",
                      "this typically refers", "please see the faq")
_TASK_ENDED = re.compile(r"^srun: error: \S+: tasks? [0-9,-]+: (?!Terminated\b)")


def _is_error(line: str) -> bool:
    low = line.lower()
    return any(w in low for w in _ERROR_WORDS)


def _from_launcher(line: str) -> bool:
    low = line.lower()
    return low.startswith(_LAUNCHER_PREFIXES) or "mpi_abort" in low


def task_ended(line: str) -> bool:
    """srun's line about a task that ended by itself ("task 1: Killed", "Exited with exit code 3"), not one
    srun stopped after another had died ("Terminated")."""
    return bool(_TASK_ENDED.match(line))


_TASK_EXIT_CODE = re.compile(r"^srun: error: \S+: tasks? [0-9,-]+: Exited with exit code (\d+)")


def first_task_exit_code(lines: Sequence[str]) -> int | None:
    """The exit code srun reports for the first task that exited by itself with one, or None. srun's own
    status is the highest of all its tasks', those it stopped after the first had died included (143
    for a rank that took SIGTERM): the first task's code is the run's."""
    for ln in lines:
        m = _TASK_EXIT_CODE.match(ln.strip())
        if m:
            return int(m.group(1))
    return None


def error_line(lines: Sequence[str]) -> str:
    """The program's own last error line; else srun's first line about a task that died (the
    "Terminated" ones after it are the other ranks being stopped); else the launcher's last error line;
    else the last line. At most MAX_CHARS characters."""
    lines = [ln.strip() for ln in lines if ln.strip()]
    for ln in reversed(lines):
        if _is_error(ln) and not _from_launcher(ln):
            return ln[:MAX_CHARS]
    for ln in lines:
        if task_ended(ln):
            return ln[:MAX_CHARS]
    for ln in reversed(lines):
        if _is_error(ln):
            return ln[:MAX_CHARS]
    return lines[-1][:MAX_CHARS] if lines else ""


def says_out_of_memory(output: str) -> bool:
    return "out of memory" in output.lower() or "MemoryError" in output


def mark_out_of_memory(reason: str, output: str) -> str:
    """reason, prefixed "out of memory: " when the output says so and the reason does not."""
    if says_out_of_memory(output) and "memory" not in reason.lower():
        return "out of memory: " + reason
    return reason


def failure_reason(output: str) -> str:
    """Why a run that exited non-zero failed, from its whole output."""
    return mark_out_of_memory(error_line(output.splitlines()), output)


def output_tail(path: str | os.PathLike, max_lines: int = 40, max_bytes: int = 8192) -> list[str]:
    """The last non-empty lines of a file that may be large (a run's output); [] if it cannot be read."""
    try:
        with Path(path).open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return [ln.strip() for ln in lines if ln.strip()][-max_lines:]
