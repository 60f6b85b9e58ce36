"""Fixtures of the testbed tests: real network namespaces, shaped links and MPI over TCP (needs root,
iproute2 and iptables). Without them these tests skip, unless HPCPS_REQUIRE_TESTBED=1 (set by `make
test` as root), which turns the skip into a failure: CI must not pass by skipping them.

Every testbed a test makes has a name of its own, and is taken down by that name when the test ends,
whatever happened in it."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcps.testbed import control
from hpcps.testbed.plan import name_of_netns
from hpcps.testbed.runner import NetRunner, missing_requirements

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
_names = itertools.count()


def machine_problem() -> str | None:
    why = missing_requirements(delayed=True)
    if why is None and not control.is_hydra(control.find_mpiexec() or "mpiexec"):
        why = "no MPICH hydra mpiexec (make venv installs the mpich wheel)"
    return why


@pytest.fixture(scope="session", autouse=True)
def testbed_machine():
    why = machine_problem()
    if why:
        if os.environ.get("HPCPS_REQUIRE_TESTBED") == "1":
            pytest.fail(f"HPCPS_REQUIRE_TESTBED=1 but no testbed can be built here: {why}", pytrace=False)
        pytest.skip(f"no testbed here: {why}")


@pytest.fixture
def bed_name():
    """A testbed name for this test (pid and a counter), taken down at the end whatever happened."""
    name = f"q{os.getpid() % 100000}{next(_names)}"[:9]
    yield name
    control.down(name, NetRunner())


def bed_cli(*args: str, timeout: float = 300, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """python -m hpcps.testbed ARGS, with the project on PYTHONPATH."""
    e = dict(os.environ if env is None else env)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([PY, "-m", "hpcps.testbed", *args], capture_output=True, text=True, timeout=timeout,
                          env=e, cwd=cwd or ROOT)


def namespaces_of(name: str) -> list[str]:
    return [ns for ns in NetRunner().netns_list() if name_of_netns(ns) == name]
