"""The errors of traces: a file that is not a readable trace, and a trace that cannot be written."""

from __future__ import annotations

import re

from hpcps.config.errors import ConfigError


class TraceError(ConfigError):
    """A file that is not a readable hpcps trace. str() is '<file>: <what is wrong>'.

    A ConfigError, because to a command-line tool a bad trace is bad input (exit status 2).
    """

    def __init__(self, path, message: str):
        super().__init__(str(path), None, message)
        self.path = str(path)


class TraceWriteError(ConfigError):
    """The trace file could not be written (a full disk, a file size limit, a vanished folder)."""

    def __init__(self, path, error: BaseException, kept: bool):
        reason = write_failure(error)
        after = ("; the file holds what was flushed before" if kept else "; nothing was left behind")
        super().__init__(str(path), None, f"cannot write the trace: {reason}{after}")
        self.path = str(path)


def write_failure(error: BaseException) -> str:
    """Why a write failed, in a few words: the system's reason when HDF5 names one (its own messages
    span lines and carry buffer addresses)."""
    text = str(error)
    found = re.search(r"error message = '([^']*)'", text)
    if found:
        return found.group(1)
    return " ".join(str(getattr(error, "strerror", None) or text).split())[:200]
