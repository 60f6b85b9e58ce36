"""A deadline per unit test: a test stuck in a loop (code under test that never ends, as a mutation
test's changed code may) prints every thread's stack and ends the process, instead of holding the run.
The deadline covers the test's whole run, fixtures of any scope set up for it included.

The deadline (seconds) is HPCPS_UNIT_DEADLINE_S, 600 by default: far above the slowest unit test on a
loaded 2-core machine (test_imports, about 3 minutes).

Also the fixtures that more than one test module takes."""

import faulthandler
import os
import sys
from pathlib import Path

import pytest

DEADLINE_S = float(os.environ.get("HPCPS_UNIT_DEADLINE_S", "600"))
ROOT = Path(__file__).resolve().parents[2]


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


# Ten times the calibrated seconds per value (results/emulation_hetero8_profiles.toml), so that encoding
# and decoding weigh as much as the bytes they save.
CODEC_COSTS = (("int8", (2e-8, 4e-9)), ("sign", (3e-8, 6e-9)))


@pytest.fixture(scope="module")
def slownet():
    """The network-bound cluster, the 11M-parameter job, profiles with codec costs, and the problem
    with none, int8 and sign allowed (test_tune_models, test_tune_structured_parts)."""
    from dataclasses import replace

    from hpcps.cluster import load_cluster
    from hpcps.config import load_job
    from hpcps.sim import load_profiles
    from hpcps.tune.problem import problem_for
    cluster = load_cluster(ROOT / "jobs/clusters/slownet5.toml")
    job = load_job(ROOT / "jobs/cifar-wide.toml")
    profiles = load_profiles()
    profiles = replace(profiles, machine=replace(profiles.machine, codec_s_per_element=CODEC_COSTS))
    return cluster, job, profiles, problem_for(cluster, job, profiles, codecs=("sign", "int8"))
