"""The one TOML writer: what hpcps writes (schedules, cluster files, compute profiles) goes through
tomli-w, so any text it writes reads back with tomllib to the same table.

tomli-w puts every array item on a line of its own; short arrays are joined back onto one line
(servers = [0, 3]), and the result is checked to read back to the same table.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import tomli_w

from hpcps.config.errors import one_line

LINE = 100
# An array written one item per line, no item holding a bracket or a brace (innermost arrays first).
_ARRAY = re.compile(r"\[\n((?:[ \t]+[^\n\[\]{}]+,\n)+)[ \t]*\]")


def _join(match: re.Match) -> str:
    items = [line.strip()[:-1] for line in match.group(1).splitlines()]
    one = "[" + ", ".join(items) + "]"
    return one if len(one) <= LINE else match.group(0)


def _compact(text: str) -> str:
    for _ in range(8):                 # nested arrays: the inner ones first
        joined = _ARRAY.sub(_join, text)
        if joined == text:
            break
        text = joined
    return text


def dumps(table: dict[str, Any], comment: str = "") -> str:
    """table as TOML text, after comment's lines as '# ' comments (when given)."""
    text = tomli_w.dumps(table)
    compact = _compact(text)
    try:
        if tomli_w.dumps(tomllib.loads(compact)) == text:     # the same values (nan included)
            text = compact
    except tomllib.TOMLDecodeError:
        pass
    head = "".join(f"# {one_line(line)}".rstrip() + "\n" for line in comment.splitlines()) if comment else ""
    return head + text


def toml_string(value: str) -> str:
    """A string as a TOML value (quoted and escaped as tomli-w does), for text written around comments."""
    return tomli_w.dumps({"v": value})[len("v = "):].rstrip("\n")


def toml_key(key: str) -> str:
    """A key as TOML writes it: bare when it can be, else quoted."""
    return tomli_w.dumps({key: 0}).rsplit(" = ", 1)[0]
