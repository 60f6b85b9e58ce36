"""Fixtures of the real-Slurm tests: one throw-away local Slurm for the whole session, and another whose
slurmds stand on the nodes of a testbed (hpcps.testbed) for the tests that run there too.

Without Slurm (or without root) these tests skip, unless HPCPS_REQUIRE_SLURM=1 (set by `make test`),
which turns the skip into a failure: CI must not pass by skipping them. The testbed's Slurm likewise
with HPCPS_REQUIRE_TESTBED=1.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from hpcps.slurm import SlurmClient
from hpcps.slurm.parse import classify_state
from tests.slurm.local_cluster import DEFAULT_CLUSTER, LocalSlurm, missing_requirements, nodes_from_cluster_file

_bringup: dict[str, float] = {}


@pytest.fixture(scope="session")
def local_slurm():
    why = missing_requirements()
    if why:
        if os.environ.get("HPCPS_REQUIRE_SLURM") == "1":
            pytest.fail(f"HPCPS_REQUIRE_SLURM=1 but the local Slurm cannot start: {why}", pytrace=False)
        pytest.skip(why)
    cluster = LocalSlurm(nodes_from_cluster_file())
    t0 = time.monotonic()
    cluster.start()
    _bringup["start_s"] = cluster.bringup_s
    yield cluster
    pids = dict(cluster.pids)
    t1 = time.monotonic()
    cluster.stop()
    _bringup["stop_s"] = time.monotonic() - t1
    _bringup["total_s"] = cluster.bringup_s + _bringup["stop_s"]
    _bringup.setdefault("session_s", time.monotonic() - t0)
    alive = [f"{name} ({pid})" for name, pid in pids.items() if _alive(pid)]
    assert not alive, f"local Slurm daemons still running after stop: {', '.join(alive)}"
    assert not cluster.step_daemon_pids(), "slurmstepd processes of the local Slurm still running"
    assert not cluster.scratch.exists(), f"scratch directory {cluster.scratch} was not removed"


@pytest.fixture(scope="session")
def testbed_slurm():
    """A local Slurm whose slurmds run in the namespaces of a testbed of hetero8 (its default dilation)."""
    from hpcps.testbed.runner import missing_requirements as testbed_missing
    why = missing_requirements()
    if why:
        if os.environ.get("HPCPS_REQUIRE_SLURM") == "1":
            pytest.fail(f"HPCPS_REQUIRE_SLURM=1 but the local Slurm cannot start: {why}", pytrace=False)
        pytest.skip(why)
    why = testbed_missing(delayed=True)
    if why:
        if os.environ.get("HPCPS_REQUIRE_TESTBED") == "1":
            pytest.fail(f"HPCPS_REQUIRE_TESTBED=1 but no testbed can be built here: {why}", pytrace=False)
        pytest.skip(f"no testbed here: {why}")
    cluster = LocalSlurm(nodes_from_cluster_file(), testbed=DEFAULT_CLUSTER)
    cluster.start()
    yield cluster
    pids = dict(cluster.pids)
    name = cluster.testbed_name
    cluster.stop()
    alive = [f"{n} ({pid})" for n, pid in pids.items() if _alive(pid)]
    assert not alive, f"local Slurm daemons still running after stop: {', '.join(alive)}"
    from hpcps.testbed import control
    from hpcps.testbed.runner import NetRunner
    assert name not in control.names_in_use(NetRunner()), f"testbed {name} of the local Slurm still up"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


@pytest.fixture
def slurm_client(local_slurm) -> SlurmClient:
    return SlurmClient(env=local_slurm.env)


def wait_for_job(client: SlurmClient, job_id: str, timeout_s: float = 120) -> dict[str, str]:
    """Poll scontrol until the job has ended; its final record. Cancels it and fails on timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        rec = client.show_job(job_id)
        assert rec is not None, f"job {job_id} vanished from scontrol"
        if classify_state(rec["JobState"]) not in ("PENDING", "RUNNING"):
            return rec
        if time.monotonic() > deadline:
            client.scancel(job_id)
            pytest.fail(f"job {job_id} still {rec['JobState']} after {timeout_s:.0f} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def run_slurm(local_slurm, *argv: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a command with the local Slurm's environment (or env, which should extend it)."""
    return subprocess.run(list(argv), env=env or local_slurm.env, capture_output=True, text=True, timeout=60, **kw)


def pytest_terminal_summary(terminalreporter):
    if "start_s" in _bringup:
        terminalreporter.write_line(
            f"local Slurm: started in {_bringup['start_s']:.2f} s, stopped in {_bringup.get('stop_s', 0):.2f} s "
            f"(set-up and tear-down {_bringup.get('total_s', _bringup['start_s']):.2f} s of this run)")
