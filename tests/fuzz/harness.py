"""Running a command in-process with a hard time limit, and the outcomes allowed under bad input:
exit status 0, or exit status 2 with exactly one line 'tool: error: ...' on standard error; never a
traceback, never a hang."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st


class Hang(Exception):
    """The command ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Hang raised where the body is after `seconds` of wall time. Keep Hypothesis's drawing of examples
    outside the body: the alarm would otherwise go off inside Hypothesis (once inside its garbage
    collector callback, where the exception cannot propagate and the test failed without a Hang)."""
    def expire(signum, frame):
        raise Hang(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Outcome:
    status: int
    out: str
    err: str


def run_main(main: Callable[[list[str]], int], argv: list[str], seconds: float = 20.0) -> Outcome:
    """main(argv) with its output captured; any exception but SystemExit propagates (a test failure)."""
    out, err = io.StringIO(), io.StringIO()
    with time_limit(seconds), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code
    return Outcome(status if status is not None else 0, out.getvalue(), err.getvalue())


def assert_clean(outcome: Outcome, tool: str) -> None:
    assert "Traceback" not in outcome.err, outcome.err
    assert outcome.status in (0, 2), (outcome.status, outcome.err)
    if outcome.status == 2:
        lines = outcome.err.splitlines()
        errors = [line for line in lines if not line.startswith("note: ")]
        assert len(errors) == 1 and errors[0].startswith(f"{tool}: error: "), outcome.err


# -- generated values and mutations -------------------------------------------------------------------

SPECIAL_FLOATS = [0.0, -0.0, -1.0, 1e-300, 1e300, -1e300, math.nan, math.inf, -math.inf, 1e5, 1e-3, 4096.0]
SPECIAL_INTS = [0, -1, 1, 2, 2**31, -(2**31), 2**63 - 1, 10**7, 10**9, 100000]

toml_scalars = st.one_of(
    st.sampled_from(SPECIAL_INTS), st.sampled_from(SPECIAL_FLOATS),
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=8),
)
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3),
                        st.dictionaries(st.text(min_size=1, max_size=6), toml_scalars, max_size=2))


def leaf_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths (keys and list indices) to every value inside nested dicts and lists, containers included."""
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            paths += leaf_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            paths += leaf_paths(v, prefix + (i,))
    return paths


def mutate(data: st.DataObject, table: dict, max_changes: int = 3) -> dict:
    """table with one to max_changes changes drawn: a value replaced, a key removed, an unknown key added."""
    table = copy.deepcopy(table)
    for _ in range(data.draw(st.integers(1, max_changes), label="changes")):
        paths = leaf_paths(table)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        *head, last = path
        parent = table
        for k in head:
            parent = parent[k]
        action = data.draw(st.sampled_from(["replace", "replace", "replace", "remove", "add"]), label="action")
        if action == "replace":
            parent[last] = data.draw(toml_values, label="value")
        elif action == "remove":
            if isinstance(parent, dict):
                del parent[last]
            else:
                parent.pop(last)
        elif isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=6), label="key")] = data.draw(toml_values, label="value")
    return table
