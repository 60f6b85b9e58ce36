"""Slurm hostlist expressions: "n[1-3]" is n1, n2, n3; "gpu[01-04,07]" keeps the zero padding;
"a,b" lists names; "r[1-2]-n[1-2]" expands every bracket (r1-n1, r1-n2, r2-n1, r2-n2), as Slurm does.
"""

from __future__ import annotations

import re

# Hostnames as Slurm accepts them, plus '.' and '_' which real clusters use.
_NAME_PART = re.compile(r"[A-Za-z0-9._-]*")
# A typo like n[1-1000000000] must give an error, not exhaust memory.
MAX_NAMES = 100_000


class HostlistError(ValueError):
    """A hostlist expression that cannot be expanded; the message says what is wrong."""


def _split_top_level(text: str) -> list[str]:
    """Split on the commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            if depth:
                raise HostlistError(f"nested '[' at position {i} in {text!r}")
            depth = 1
        elif c == "]":
            if not depth:
                raise HostlistError(f"']' without '[' at position {i} in {text!r}")
            depth = 0
        elif c == "," and not depth:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise HostlistError(f"'[' is never closed in {text!r}")
    parts.append(text[start:])
    return parts


def _expand_range_list(body: str, expr: str) -> list[str]:
    """'01-04,07' -> ['01', '02', '03', '04', '07'], keeping the width of zero-padded numbers."""
    out = []
    for item in body.split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise HostlistError(f"bad range {item!r} in {expr!r}: use numbers like 1-4 or 01-04, separated by commas")
        if not sep:
            out.append(lo)
            continue
        a, b = int(lo), int(hi)
        if b < a:
            raise HostlistError(f"range {item!r} in {expr!r} runs backwards")
        if b - a >= MAX_NAMES:
            raise HostlistError(f"range {item!r} in {expr!r} has more than {MAX_NAMES} names")
        # Slurm pads to the width of the lower bound when it has a leading zero.
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        out.extend(str(n).zfill(width) for n in range(a, b + 1))
    return out


def _expand_one(expr: str) -> list[str]:
    names = [""]
    pos = 0
    for m in re.finditer(r"\[([^\]]*)\]", expr):
        prefix = expr[pos:m.start()]
        if _NAME_PART.fullmatch(prefix) is None:
            raise HostlistError(f"bad character in {expr!r}: names use letters, digits, '.', '_' and '-'")
        names = [n + prefix + r for n in names for r in _expand_range_list(m.group(1), expr)]
        if len(names) > MAX_NAMES:
            raise HostlistError(f"{expr!r} stands for more than {MAX_NAMES} names")
        pos = m.end()
    tail = expr[pos:]
    if _NAME_PART.fullmatch(tail) is None:
        raise HostlistError(f"bad character in {expr!r}: names use letters, digits, '.', '_' and '-'")
    names = [n + tail for n in names]
    if any(not n for n in names):
        raise HostlistError(f"empty name in {expr!r}")
    return names


def expand_hostlist(text: str) -> list[str]:
    """Every name a hostlist expression stands for, in order. Raises HostlistError on bad syntax.

    Duplicates are kept (the caller decides whether they are allowed).
    """
    if not isinstance(text, str) or not text.strip():
        raise HostlistError("empty hostlist: give names like 'n[1-4]' or 'a,b'")
    out = []
    for part in _split_top_level(text.strip()):
        part = part.strip()
        if not part:
            raise HostlistError(f"empty name between commas in {text!r}")
        out.extend(_expand_one(part))
    return out
