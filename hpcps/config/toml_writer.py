"""The one TOML writer: what hpcps writes (schedules, cluster files) goes through tomli-w, so any text
it writes reads back with tomllib to the same table."""

from __future__ import annotations

from typing import Any

import tomli_w


def dumps(table: dict[str, Any], comment: str = "") -> str:
    """table as TOML text, after comment's lines as '# ' comments (when given)."""
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines()) if comment else ""
    return head + tomli_w.dumps(table)
