"""hpcps.comm.waits: waiting on a request by testing it and sleeping in between, never spinning; pauses
that a socket's bytes end early."""

import os
import select
import socket
import threading
import time

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


# ---- SocketWake: real sockets, real select ---------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_pause_ends_when_a_socket_has_bytes_to_read():
    a, b = socket.socketpair()
    try:
        wake = waits.SocketWake(5.0)
        threading.Timer(0.05, b.send, (b"x",)).start()
        t0 = time.monotonic()
        wake.pause()
        assert a.fileno() in wake.watched
        assert 0.03 < time.monotonic() - t0 < 1.0          # woken by the byte, long before the 5 s timeout
    finally:
        a.close()
        b.close()


def test_without_bytes_a_pause_lasts_its_poll():
    a, b = socket.socketpair()
    try:
        wake = waits.SocketWake(0.05)
        t0 = time.monotonic()
        wake.pause()
        assert 0.045 < time.monotonic() - t0 < 1.0
    finally:
        a.close()
        b.close()


def test_sockets_opened_later_are_watched_after_the_next_look():
    clock = Clock()
    wake = waits.SocketWake(0.01, clock=clock)
    wake.pause()
    a, b = socket.socketpair()
    fds = {a.fileno(), b.fileno()}
    try:
        assert not fds & set(wake.watched)
        clock.t = wake.RESCAN_S / 2
        wake.pause()
        assert not fds & set(wake.watched)              # not yet: looking costs a scan of the descriptors
        clock.t = wake.RESCAN_S
        wake.pause()
        assert fds <= set(wake.watched)
    finally:
        a.close()
        b.close()
    wake.pause()                                       # closed sockets are dropped, not an error
    assert not fds & set(wake.watched)


def test_only_sockets_are_watched(tmp_path):
    r, w = os.pipe()
    try:
        wake = waits.SocketWake(0.01)
        wake.look()
        assert r not in wake.watched and w not in wake.watched
    finally:
        os.close(r)
        os.close(w)


def test_a_socket_left_unread_costs_plain_sleeps_after_a_streak(sleeps):
    a, b = socket.socketpair()
    try:
        b.send(b"never read")
        wake = waits.SocketWake(0.002)
        for _ in range(wake.STREAK):
            wake.pause()                               # each returns at once: the rank may read it now
        assert sleeps == []
        wake.pause()
        wake.pause()
        assert sleeps == [0.002, 0.002]                # MPI leaves it: no spinning on it
        a.recv(100)
        wake.pause()                                   # nothing waiting: back to waking on bytes
        assert sleeps == [0.002, 0.002]
    finally:
        a.close()
        b.close()



def test_epoll_sets_are_watched_and_pipes_are_not():
    ep = select.epoll()
    r, w = os.pipe()
    try:
        wake = waits.SocketWake(0.01)
        wake.look()
        assert ep.fileno() in wake.watched and r not in wake.watched and w not in wake.watched
    finally:
        ep.close()
        os.close(r)
        os.close(w)


def test_an_epoll_set_ends_a_pause_when_a_member_is_ready_for_what_was_asked(tmp_path):
    """An MPI provider's epoll set, watched as one descriptor: ready when a member is ready for what its
    owner asked, writability included (a sender waiting for room in a socket's buffer has nothing to
    read)."""
    c, d = socket.socketpair()
    ep = select.epoll()
    try:
        (tmp_path / str(ep.fileno())).symlink_to("anon_inode:[eventpoll]")    # a descriptor table of one
        wake = waits.SocketWake(0.2, fd_dir=str(tmp_path))
        ep.register(c.fileno(), select.EPOLLIN)         # asked to read: nothing to read, the pause lasts
        t0 = time.monotonic()
        wake.pause()
        assert wake.watched == [ep.fileno()] and time.monotonic() - t0 > 0.15
        ep.modify(c.fileno(), select.EPOLLIN | select.EPOLLOUT)    # asked to write: room, ends at once
        t0 = time.monotonic()
        wake.pause()
        assert time.monotonic() - t0 < 0.1
    finally:
        ep.close()
        c.close()
        d.close()
