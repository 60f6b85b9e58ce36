"""A deadline per unit test: a test stuck in a loop (code under test that never ends, as a mutation
test's changed code may) prints every thread's stack and ends the process, instead of holding the run.
The deadline covers the test's whole run, fixtures of any scope set up for it included.

The deadline (seconds) is HPCPS_UNIT_DEADLINE_S, 600 by default: far above the slowest unit test on a
loaded 2-core machine (test_imports, about 3 minutes)."""

import faulthandler
import os
import sys

import pytest

DEADLINE_S = float(os.environ.get("HPCPS_UNIT_DEADLINE_S", "600"))


def _stderr():
    """The process's own standard error: a runner may have put something without a file descriptor
    in sys.stderr (mutmut's output catcher), and the stacks must go somewhere real."""
    for f in (sys.__stderr__, sys.stderr):
        try:
            f.fileno()
            return f
        except (AttributeError, OSError, ValueError):
            continue
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    out = _stderr()
    if out is not None:
        faulthandler.dump_traceback_later(DEADLINE_S, exit=True, file=out)
    try:
        yield
    finally:
        if out is not None:
            faulthandler.cancel_dump_traceback_later()
