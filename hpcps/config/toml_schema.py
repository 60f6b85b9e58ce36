"""Strict reading of TOML tables: unknown keys and wrong types are errors that list what is valid."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hpcps.config.errors import ConfigError

_REQUIRED = object()
REQUIRED = _REQUIRED

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "a table"}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), None, "file not found")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), None, f"not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "not valid TOML: not UTF-8 text") from None


def _describe(spec: dict[str, tuple[type, Any]]) -> str:
    parts = []
    for k, (_, default) in spec.items():
        parts.append(f"{k} (required)" if default is _REQUIRED else f"{k} (default {default!r})")
    return ", ".join(parts)


def check_type(source: str, key: str, value: Any, typ: type) -> Any:
    """Return value converted to typ (an int is accepted for a float); raise ConfigError otherwise."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, bool):
        raise ConfigError(source, key, f"must be {_TYPE_NAMES[int]}, got {value!r}")
    if not isinstance(value, typ):
        raise ConfigError(source, key, f"must be {_TYPE_NAMES.get(typ, typ.__name__)}, got {value!r}")
    return value


def take_table(source: str, prefix: str, table: Any, spec: dict[str, tuple[type, Any]]) -> dict[str, Any]:
    """Validate one table against spec {key: (type, default or REQUIRED)}; return the filled-in values."""
    where = prefix or "<top level>"
    if not isinstance(table, dict):
        raise ConfigError(source, prefix or None, f"must be a table, got {table!r}")
    unknown = sorted(set(table) - set(spec))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(source, key, f"unknown key in {where}. Valid keys are: {_describe(spec)}")
    out = {}
    for k, (typ, default) in spec.items():
        full = f"{prefix}.{k}" if prefix else k
        if k in table:
            out[k] = check_type(source, full, table[k], typ)
        elif default is _REQUIRED:
            raise ConfigError(source, full, f"is required in {where}. Valid keys are: {_describe(spec)}")
        else:
            out[k] = default
    return out


def require_positive(source: str, key: str, value: float | int, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(source, key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def require_choice(source: str, key: str, value: str, choices: list[str] | tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(source, key, f"must be one of {', '.join(choices)}; got {value!r}")
