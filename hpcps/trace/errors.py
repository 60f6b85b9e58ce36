"""The one error a trace reader raises: which file, and what is wrong with it."""

from __future__ import annotations

from hpcps.config.errors import ConfigError


class TraceError(ConfigError):
    """A file that is not a readable hpcps trace. str() is '<file>: <what is wrong>'.

    A ConfigError, because to a command-line tool a bad trace is bad input (exit status 2).
    """

    def __init__(self, path, message: str):
        super().__init__(str(path), None, message)
        self.path = str(path)
