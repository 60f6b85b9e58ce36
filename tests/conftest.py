"""Shared helpers: launching real MPI jobs and checking that none of their processes is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec")


def mpi_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def run_mpi(n: int, args: list[str], timeout: float = 240, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """mpiexec -n n python <args>; returns the finished process (text output).

    Without cwd the job runs in a scratch directory of its own, so what it writes by default (a trace
    under results/runs/) does not land in the project."""
    cmd = [MPIEXEC, "-n", str(n), sys.executable, *args]
    if cwd is not None:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=mpi_env(env))
    with tempfile.TemporaryDirectory(prefix="hpcps-test-run-") as scratch:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=scratch, env=mpi_env(env))


def processes_mentioning(marker: str) -> list[int]:
    """Pids of live processes whose command line contains marker (a unique temporary path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def assert_no_leftovers(marker: str, grace_s: float = 5.0) -> None:
    deadline = time.monotonic() + grace_s
    while (left := processes_mentioning(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes still running after the job ended: {left}"


@pytest.fixture
def root() -> Path:
    return ROOT


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Plain pytest skips the tests that need several MPI ranks: say so, and how to run them."""
    if config.getoption("--with-mpi", default=False):
        return
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "tests/mpi/" in r.nodeid]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} MPI tests were skipped: they run under mpiexec, "
            "`make test-mpi` (sizes 3 and 5) or "
            "`.venv/bin/mpiexec -n 3 .venv/bin/python -m pytest --with-mpi tests/mpi`",
            yellow=True)


@pytest.fixture
def clock(monkeypatch):
    """The emulated fabric's clock (hpcps.emulate.fabric.now) as a tests.fakes.FakeClock, moved by hand."""
    import hpcps.emulate.fabric as fabric_mod
    from tests.fakes import FakeClock
    c = FakeClock()
    monkeypatch.setattr(fabric_mod, "now", c)
    return c
