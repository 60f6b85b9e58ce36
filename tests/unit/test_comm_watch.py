"""hpcps.comm.watch: the lowest rank of a node names a neighbour rank whose process ended and aborts
the job; process_alive tells running processes from ended and zombie ones. A stand-in communicator
lists a real child process as the neighbour."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from hpcps.comm import watch
from hpcps.comm.watch import RankWatch, process_alive


class Local:
    def __init__(self, rank, peers):
        self.rank, self.peers, self.freed = rank, peers, False

    def allgather(self, mine):
        assert mine == (0, os.getpid())
        return self.peers

    def Get_rank(self):
        return self.rank

    def Free(self):
        self.freed = True


class Comm:
    def __init__(self, local):
        self.local, self.aborted, self.split = local, [], None

    def Split_type(self, kind):
        from mpi4py import MPI
        self.split = kind
        assert kind == MPI.COMM_TYPE_SHARED
        return self.local

    def Get_rank(self):
        return 0

    def Abort(self, status):
        self.aborted.append(status)


@pytest.fixture
def child():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


def ended(p):
    p.kill()
    p.wait()


def test_process_alive():
    assert process_alive(os.getpid())
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not process_alive(p.pid)


def test_a_zombie_is_not_alive(child):
    assert process_alive(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_alive(child.pid) and time.monotonic() < deadline:   # not reaped: a zombie
        time.sleep(0.01)
    assert not process_alive(child.pid)
    with open(f"/proc/{child.pid}/stat") as f:
        assert f.read().rsplit(") ", 1)[-1][:1] == "Z"


def test_without_proc_stat_the_process_is_asked_by_signal_0(monkeypatch, child):
    def unreadable(path, *a, **k):
        raise PermissionError(path)
    monkeypatch.setattr(watch, "open", unreadable, raising=False)
    assert process_alive(os.getpid()) and process_alive(child.pid)
    ended(child)
    assert not process_alive(child.pid)
    monkeypatch.setattr(watch.os, "kill", lambda pid, sig: (_ for _ in ()).throw(PermissionError()))
    assert process_alive(child.pid)           # there, but not ours to signal


def test_the_first_rank_of_a_node_names_a_dead_neighbour_and_aborts(child, capsys):
    aborted = threading.Event()
    local = Local(0, [(0, os.getpid()), (5, child.pid)])
    comm = Comm(local)
    w = RankWatch(comm, "mytool", interval_s=0.01, abort=aborted.set)
    assert local.freed and w.peers == [(5, child.pid)] and w.tool == "mytool" and w.interval_s == 0.01
    assert w._thread is not None and w._thread.daemon and w._thread.name == "hpcps-rank-watch"
    time.sleep(0.05)
    assert not aborted.is_set()
    ended(child)
    assert aborted.wait(10)
    w._thread.join(10)
    assert not w._thread.is_alive()                # it returns after aborting
    assert capsys.readouterr().err == (f"mytool: rank 5 (pid {child.pid}) on {socket.gethostname()} ended while "
                                       "the job ran (killed?); ending the job\n")
    w.stop()


def test_the_default_abort_is_mpi_abort_with_status_1(child, capsys):
    comm = Comm(Local(0, [(0, os.getpid()), (1, child.pid)]))
    w = RankWatch(comm, "t", interval_s=0.01)
    ended(child)
    w._thread.join(10)
    assert comm.aborted == [1] and "rank 1 (pid" in capsys.readouterr().err


def test_stop_ends_the_watch_without_aborting(child, capsys):
    comm = Comm(Local(0, [(0, os.getpid()), (1, child.pid)]))
    w = RankWatch(comm, "t", interval_s=0.01)
    time.sleep(0.05)
    w.stop()
    assert not w._thread.is_alive() and comm.aborted == [] and capsys.readouterr().err == ""
    ended(child)
    time.sleep(0.05)
    assert comm.aborted == []


def test_other_ranks_of_the_node_and_lone_ranks_do_not_watch(child):
    other = RankWatch(Comm(Local(1, [(0, child.pid), (1, os.getpid())])), "t", interval_s=0.01)
    assert other.peers == [(0, child.pid)] and other._thread is None
    other.stop()                                   # nothing to join
    alone = RankWatch(Comm(Local(0, [(0, os.getpid())])), "t", interval_s=0.01)
    assert alone.peers == [] and alone._thread is None


def test_every_dead_neighbour_is_named_on_one_line(capsys):
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    try:
        comm = Comm(Local(0, [(0, os.getpid()), (2, kids[0].pid), (3, kids[1].pid)]))
        for k in kids:
            k.kill()
            k.wait()
        w = RankWatch(comm, "t", interval_s=0.01)
        w._thread.join(10)
        err = capsys.readouterr().err
        assert comm.aborted == [1]
        assert err.startswith(f"t: rank 2 (pid {kids[0].pid}), rank 3 (pid {kids[1].pid}) on ")
    finally:
        for k in kids:
            k.kill()
            k.wait()


def test_a_process_named_with_a_parenthesis_is_read_by_its_last_one():
    code = ("import ctypes, time; ctypes.CDLL(None).prctl(15, b'x) Z', 0, 0, 0); print('ok', flush=True); "
            "time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ok"
        with open(f"/proc/{p.pid}/stat") as f:
            assert f.read().startswith(f"{p.pid} (x) Z) ")
        assert process_alive(p.pid)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


@pytest.mark.parametrize("state, alive", [("S", True), ("R", True), ("D", True), ("Z", False), ("X", False)])
def test_the_state_letter_after_the_name(monkeypatch, state, alive):
    import io
    monkeypatch.setattr(watch, "open", lambda path: io.StringIO(f"4242 (my (odd) name) {state} 1 4242 0"),
                        raising=False)
    assert process_alive(4242) is alive


def test_asking_by_signal_0_leaves_the_process_alone(monkeypatch, child):
    def unreadable(path, *a, **k):
        raise PermissionError(path)
    monkeypatch.setattr(watch, "open", unreadable, raising=False)
    assert process_alive(child.pid)
    time.sleep(0.2)
    assert child.poll() is None                   # no signal was delivered
