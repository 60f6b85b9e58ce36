"""Numbers read from environment variables, checked as command-line flags are.

An environment variable is input like any other: a value that is no number, or out of range, is one
ConfigError naming the variable, what it must be and what it holds, before anything is written."""

from __future__ import annotations

import os

from hpcps.config.errors import ConfigError
from hpcps.config.toml_schema import check_number


def env_number(name: str, kind: type[int] | type[float], what: str, *, ge: float | None = None,
               le: float | None = None) -> int | float:
    """The variable `name` as an int or float (kind); unset or empty: 0. `what` says what it must be
    when it is no number of that kind ('a trial number >= 0 (0 or empty: never)')."""
    text = os.environ.get(name, "").strip()
    try:
        value = kind(text or 0)
    except ValueError:
        raise ConfigError(name, None, f"must be {what}, got {text!r}") from None
    return kind(check_number(name, None, value, ge=ge, le=le))
