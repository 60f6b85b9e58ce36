"""No MPI job hangs on an error: an exception on any rank is reported and ends every rank."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def abort_on_error(comm, tool: str = "hpcps"):
    """Run the body; on an exception print the rank, host and error, then MPI_Abort the whole job.

    Abort (rather than exit) matters: the other ranks may sit in a receive that would never complete.
    Bad input found late on one rank (a ConfigError) aborts with status 2, anything else with 1.
    """
    try:
        yield
    except SystemExit as e:
        if e.code in (0, None) or comm.Get_size() == 1:
            raise
        sys.stderr.write(f"{tool}: rank {comm.Get_rank()} exited with status {e.code}; ending the job\n")
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        comm.Abort(e.code if isinstance(e.code, int) else EXIT_FAILURE)
    except BaseException as e:  # noqa: BLE001 - any failure must end every rank
        status = EXIT_INPUT_ERROR if isinstance(e, ConfigError) else EXIT_FAILURE
        # A failure the program diagnosed itself (one_line = True, e.g. a diverged run) needs no traceback.
        detail = "" if isinstance(e, ConfigError) or getattr(e, "one_line", False) else traceback.format_exc()
        sys.stderr.write(f"{detail}{tool}: error on rank {comm.Get_rank()} ({socket.gethostname()}): "
                         f"{type(e).__name__}: {e}\n")
        sys.stderr.flush()
        if comm.Get_size() == 1:
            sys.exit(status)
        time.sleep(ABORT_GRACE_S)
        comm.Abort(status)
