"""The MPI tests run inside one mpiexec job: a rank stuck in a test (a lost message, a collective the
others never reach) would hold the whole suite. Each test gets a deadline; past it, every thread's
stack is printed and the process exits, so that mpiexec ends the job and the suite fails, naming where."""

import faulthandler

import pytest

DEADLINE_S = 300          # the slowest MPI test takes under a minute on 2 cores


@pytest.fixture(autouse=True)
def _deadline():
    faulthandler.dump_traceback_later(DEADLINE_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
