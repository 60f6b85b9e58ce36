"""The one TOML writer: what hpcps writes (schedules, cluster files) goes through tomli-w, so any text
it writes reads back with tomllib to the same table."""

from __future__ import annotations

from typing import Any

import tomli_w


def dumps(table: dict[str, Any], comment: str = "") -> str:
    """table as TOML text, after comment's lines as '# ' comments (when given)."""
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines()) if comment else ""
    return head + tomli_w.dumps(table)


def toml_string(value: str) -> str:
    """A string as a TOML value (quoted and escaped as tomli-w does), for text written around comments."""
    return tomli_w.dumps({"v": value})[len("v = "):].rstrip("\n")


def toml_key(key: str) -> str:
    """A key as TOML writes it: bare when it can be, else quoted."""
    return tomli_w.dumps({key: 0}).rsplit(" = ", 1)[0]
