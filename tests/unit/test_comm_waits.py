"""hpcps.comm.waits: waiting on a request by testing it and sleeping in between, never spinning."""

import pytest

from hpcps.comm import waits


class Request:
    def __init__(self, tests_until_done):
        self.left, self.tests = tests_until_done, 0

    def Test(self):
        self.tests += 1
        self.left -= 1
        return self.left <= 0


@pytest.fixture
def sleeps(monkeypatch):
    got = []
    monkeypatch.setattr(waits.time, "sleep", got.append)
    return got


def test_wait_sleeping_sleeps_between_tests_until_the_request_completes(sleeps):
    req = Request(3)
    waits.wait_sleeping(req, 0.25)
    assert req.tests == 3 and sleeps == [0.25, 0.25]


def test_a_completed_request_is_not_slept_on(sleeps):
    req = Request(1)
    waits.wait_sleeping(req)
    assert req.tests == 1 and sleeps == []


def test_the_default_poll_is_a_millisecond(sleeps):
    assert waits.POLL_S == 1e-3
    waits.wait_sleeping(Request(2))
    assert sleeps == [1e-3]


def test_sleeping_barrier_waits_on_a_nonblocking_barrier(sleeps):
    class Comm:
        def __init__(self):
            self.req = None

        def Ibarrier(self):
            self.req = Request(4)
            return self.req

    comm = Comm()
    waits.sleeping_barrier(comm, 0.5)
    assert comm.req.tests == 4 and sleeps == [0.5] * 3
    comm = Comm()
    waits.sleeping_barrier(comm)
    assert sleeps[3:] == [1e-3] * 3
