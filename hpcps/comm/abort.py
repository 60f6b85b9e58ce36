"""No MPI job hangs on an error: an exception on any rank is reported and ends every rank."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import traceback

from hpcps.config.errors import ConfigError

EXIT_INPUT_ERROR = 2
EXIT_FAILURE = 1
# MPI_Abort can end the launcher before it has forwarded what this rank just wrote to stderr (measured:
# the message lost in 2 of 6 runs, 4 ranks on 2 cores); a pause on the way out lets it through.
ABORT_GRACE_S = 0.5


def exit_status(code) -> int:
    """The status a rank that left with SystemExit(code) ends the job with: never 0, since the job did
    not finish (sys.exit(0), sys.exit() and sys.exit("text") all count as failures here)."""
    if isinstance(code, int) and not isinstance(code, bool) and 0 < code < 256:
        return code
    return EXIT_FAILURE


@contextlib.contextmanager
def abort_on_error(comm, tool: str = "hpcps"):
    """Run the body; on an exception print the rank, host and error, then MPI_Abort the whole job.

    Abort (rather than exit) matters: the other ranks may sit in a receive that would never complete.
    That holds for SystemExit too, whatever its status: a rank that leaves early with status 0 would
    otherwise leave the others waiting for it forever. Bad input found late on one rank (a
    ConfigError) aborts with status 2, anything else with 1 (or the rank's own non-zero exit status).
    """
    try:
        yield
    except SystemExit as e:
        status = exit_status(e.code)
        _say(f"{tool}: rank {comm.Get_rank()} ({socket.gethostname()}) left the run early "
             f"(sys.exit({e.code!r})); ending the job with status {status}\n")
        _end(comm, status)
    except BaseException as e:  # noqa: BLE001 - any failure must end every rank
        status = EXIT_INPUT_ERROR if isinstance(e, ConfigError) else EXIT_FAILURE
        detail = "" if isinstance(e, ConfigError) else traceback.format_exc()
        what = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        _say(f"{detail}{tool}: error on rank {comm.Get_rank()} ({socket.gethostname()}): {what}\n")
        _end(comm, status)


def _say(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _end(comm, status: int) -> None:
    if comm.Get_size() > 1:
        time.sleep(ABORT_GRACE_S)
        comm.Abort(status)
    # Alone, or after an Abort that returned: leave as MPI_Abort would, without the interpreter's
    # clean-up, which can crash or block on what failed (HDF5 retries a flush that a full disk refuses).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
