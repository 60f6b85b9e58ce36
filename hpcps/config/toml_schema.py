"""Strict reading of TOML tables: unknown keys, wrong types and values out of range are errors that say
what is valid.

The frozen dataclasses of the configuration are the one source of truth for their TOML tables: each
field is a key, its default the key's default, and option() adds the range a number must lie in.
spec_of(cls) builds the spec that take_table checks a table against::

    @dataclass(frozen=True)
    class WorkerSpec:
        rank: int = option(ge=0)                 # required: no default
        threads: int = option(1, gt=0, le=512)

    values = take_table(source, "workers[0]", table, spec_of(WorkerSpec))
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcps.config.errors import ConfigError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "a table"}


@dataclass(frozen=True)
class Key:
    """One key of a table: its TOML type, its default (REQUIRED: none), and for numbers the range
    (ge/gt: lowest allowed, inclusive/exclusive; le/lt: highest) or for strings the choices."""
    type: type
    default: Any = REQUIRED
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()

    def describe(self, name: str) -> str:
        return f"{name} (required)" if self.default is REQUIRED else f"{name} (default {self.default!r})"

    def check(self, source: str, key: str, value: Any) -> Any:
        """value converted to the key's type and checked against its range; ConfigError otherwise."""
        if self.type is float and isinstance(value, float) and not math.isfinite(value):
            check_number(source, key, value, ge=self.ge, gt=self.gt, le=self.le, lt=self.lt)   # says the range
        value = check_type(source, key, value, self.type)
        if self.type in (int, float):
            check_number(source, key, value, ge=self.ge, gt=self.gt, le=self.le, lt=self.lt)
        if self.choices:
            require_choice(source, key, value, self.choices)
        return value


def option(default: Any = REQUIRED, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, choices: tuple[str, ...] = ()) -> Any:
    """A dataclass field that is also a TOML key with these limits (see spec_of)."""
    meta = {"toml": {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": tuple(choices)}}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _toml_type(hint: Any) -> tuple[type, bool]:
    """(TOML type, whether None is allowed) of a field's annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _toml_type(args[0])[0], True
    if origin in (tuple, list) or hint in (tuple, list):
        return list, False
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return dict, False
    if hint in (bool, int, float, str):
        return hint, False
    raise TypeError(f"no TOML type for {hint!r}")


def spec_of(cls: type, exclude: tuple[str, ...] = ()) -> dict[str, Key]:
    """The TOML spec of a dataclass: a key per field (but those in exclude), in field order."""
    hints = typing.get_type_hints(cls)
    spec = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        typ, _ = _toml_type(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        if isinstance(default, tuple):
            default = list(default)        # as TOML writes it
        elif dataclasses.is_dataclass(default):
            default = {}                   # a table of its own, every key at its default
        spec[f.name] = Key(typ, default, **f.metadata.get("toml", {}))
    return spec


def defaults_of(cls: type) -> dict[str, Any]:
    """{key: default} of the keys of a dataclass's spec that have one."""
    return {k: v.default for k, v in spec_of(cls).items() if v.default is not REQUIRED}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file is a ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(str(path), None, "is a directory, not a TOML file")
    if not path.exists():
        raise ConfigError(str(path), None, "file not found")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), None, f"not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "not valid TOML: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(str(path), None, f"cannot read it: {e.strerror or e}") from None


def _describe(spec: Mapping[str, Key]) -> str:
    return ", ".join(v.describe(k) for k, v in spec.items())


def check_type(source: str, key: str, value: Any, typ: type) -> Any:
    """Return value converted to typ (an int is accepted for a float); raise ConfigError otherwise.
    A float must be finite: nan and inf are never a meaningful setting."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif typ is int and isinstance(value, bool):
        raise ConfigError(source, key, f"must be {_TYPE_NAMES[int]}, got {value!r}")
    elif not isinstance(value, typ):
        raise ConfigError(source, key, f"must be {_TYPE_NAMES.get(typ, typ.__name__)}, got {value!r}")
    if typ is float and not math.isfinite(value):
        raise ConfigError(source, key, f"must be a finite number, got {value!r}")
    return value


def _num(x: float) -> str:
    if isinstance(x, int):
        return str(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e7 else f"{x:g}"


def range_text(ge: float | None = None, gt: float | None = None, le: float | None = None,
               lt: float | None = None) -> str:
    """'> 0 and <= 10000': the allowed range in words."""
    parts = []
    if gt is not None:
        parts.append(f"> {_num(gt)}")
    elif ge is not None:
        parts.append(f">= {_num(ge)}")
    if lt is not None:
        parts.append(f"< {_num(lt)}")
    elif le is not None:
        parts.append(f"<= {_num(le)}")
    return " and ".join(parts)


def check_number(source: str, key: str | None, value: float | int, *, ge: float | None = None,
                 gt: float | None = None, le: float | None = None, lt: float | None = None) -> float | int:
    """Raise ConfigError unless value is a finite number in the range; return it.

    For command-line flags, source is the flag and key None: '--noise: must be >= 0 and <= 5, got 9'."""
    bad = isinstance(value, float) and not math.isfinite(value)
    bad = bad or (ge is not None and value < ge) or (gt is not None and value <= gt)
    bad = bad or (le is not None and value > le) or (lt is not None and value >= lt)
    if bad:
        what = range_text(ge, gt, le, lt)
        what = f"a finite number {what}".rstrip() if isinstance(value, float) and not math.isfinite(value) else what
        raise ConfigError(source, key, f"must be {what}, got {value!r}")
    return value


def take_table(source: str, prefix: str, table: Any, spec: Mapping[str, Key]) -> dict[str, Any]:
    """Validate one table against spec {key: Key}; return the values with defaults filled in."""
    where = prefix or "<top level>"
    if not isinstance(table, dict):
        raise ConfigError(source, prefix or None, f"must be a table, got {table!r}")
    unknown = sorted(set(table) - set(spec))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(source, key, f"unknown key in {where}. Valid keys are: {_describe(spec)}")
    out = {}
    for k, spec_key in spec.items():
        full = f"{prefix}.{k}" if prefix else k
        if k in table:
            out[k] = spec_key.check(source, full, table[k])
        elif spec_key.default is REQUIRED:
            raise ConfigError(source, full, f"is required in {where}. Valid keys are: {_describe(spec)}")
        else:
            default = spec_key.default
            out[k] = type(default)(default) if isinstance(default, (list, dict)) else default
    return out


def require_positive(source: str, key: str, value: float | int, allow_zero: bool = False) -> None:
    if allow_zero:
        check_number(source, key, value, ge=0)
    else:
        check_number(source, key, value, gt=0)


def require_choice(source: str, key: str, value: str, choices: list[str] | tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(source, key, f"must be one of {', '.join(choices)}; got {value!r}")
