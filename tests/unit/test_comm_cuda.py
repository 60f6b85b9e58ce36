"""hpcps.comm.buffers without a GPU: whether the MPI reads device memory (by library and environment),
and CudaCopies' stream and event order, driven through a stand-in torch that logs what it is asked."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from mpi4py import MPI

from hpcps.comm import buffers
from hpcps.comm.buffers import CudaCopies, ExchangeBuffer, SyncCopies, mpi_is_cuda_aware, pinned_host_array
from tests.fakes import FakeCudaArray


@pytest.fixture
def library(monkeypatch):
    for var in ("MPIR_CVAR_ENABLE_GPU", "MV2_USE_CUDA"):
        monkeypatch.delenv(var, raising=False)

    def use(version):
        monkeypatch.setattr(MPI, "Get_library_version", lambda: version)
    return use


def test_open_mpi_asks_ompi_info(library, monkeypatch):
    library("Open MPI v4.1.5, package: Open MPI")
    calls = []

    def run(args, **kw):
        calls.append((args, kw))
        return SimpleNamespace(stdout=stdout)
    monkeypatch.setattr(buffers.subprocess, "run", run)
    stdout = "mca:x\nmpi_built_with_cuda_support:value:true\n"
    assert mpi_is_cuda_aware() is True
    assert calls == [(["ompi_info", "--parsable", "--all"], {"capture_output": True, "text": True, "timeout": 20})]
    stdout = "mpi_built_with_cuda_support:value:false\n"
    assert mpi_is_cuda_aware() is False


@pytest.mark.parametrize("error", [OSError("no ompi_info"), subprocess.TimeoutExpired("ompi_info", 20)])
def test_open_mpi_without_an_answer_is_not_cuda_aware(library, monkeypatch, error):
    library("Open MPI v5.0.0")

    def run(*a, **k):
        raise error
    monkeypatch.setattr(buffers.subprocess, "run", run)
    assert mpi_is_cuda_aware() is False


def test_mpich_and_mvapich_by_their_environment(library, monkeypatch):
    library("MPICH Version: 4.2.0")
    assert mpi_is_cuda_aware() is False
    monkeypatch.setenv("MV2_USE_CUDA", "1")
    assert mpi_is_cuda_aware() is False
    monkeypatch.setenv("MPIR_CVAR_ENABLE_GPU", "1")
    assert mpi_is_cuda_aware() is True
    monkeypatch.setenv("MPIR_CVAR_ENABLE_GPU", "0")
    assert mpi_is_cuda_aware() is False
    library("MVAPICH2 Version 2.3.7")
    assert mpi_is_cuda_aware() is True
    monkeypatch.setenv("MV2_USE_CUDA", "0")
    monkeypatch.setenv("MPIR_CVAR_ENABLE_GPU", "1")
    assert mpi_is_cuda_aware() is False
    monkeypatch.delenv("MV2_USE_CUDA")
    assert mpi_is_cuda_aware() is False


def test_another_mpi_is_not_cuda_aware(library, monkeypatch):
    monkeypatch.setenv("MPIR_CVAR_ENABLE_GPU", "1")
    monkeypatch.setenv("MV2_USE_CUDA", "1")
    library("Intel(R) MPI Library 2021")
    assert mpi_is_cuda_aware() is False


class FakeTorch:
    """torch.cuda streams and events, and the copies, as a log."""

    float32 = "float32"

    def __init__(self):
        self.log, self.compute, self.n_events = [], "compute", 0
        torch = self

        class Event:
            def __init__(self):
                torch.n_events += 1
                self.name, self.passed = f"ev{torch.n_events}", False

            def record(self, stream):
                torch.log.append(("record", self.name, stream))

            def query(self):
                return self.passed

            def __repr__(self):
                return self.name

        class Stream:
            def __init__(self):
                self.name = "copy"

            def wait_event(self, ev):
                torch.log.append(("wait", self.name, ev.name))

        class CurrentStream:
            def wait_event(self, ev):
                torch.log.append(("wait", "compute", ev.name))

        class StreamContext:
            def __init__(self, stream):
                self.stream = stream

            def __enter__(self):
                torch.log.append(("enter", self.stream.name))

            def __exit__(self, *exc):
                torch.log.append(("exit", self.stream.name))

        self.cuda = SimpleNamespace(Stream=Stream, Event=Event, current_stream=lambda: "compute",
                                    stream=StreamContext)
        self._current = CurrentStream()
        self.cuda.current_stream = lambda: self._current

    def from_numpy(self, a):
        return Tensor(self, "host" if isinstance(a, np.ndarray) else repr(a), a)

    def empty(self, n, dtype=None, pin_memory=False):
        self.log.append(("empty", n, dtype, pin_memory))
        return SimpleNamespace(numpy=lambda: np.zeros(n, np.float32))


class Tensor:
    def __init__(self, torch, name, a=None):
        self.torch, self.name, self.a = torch, name, a

    def copy_(self, src, non_blocking=False):
        self.torch.log.append(("copy", self.name, src.name, non_blocking))


@pytest.fixture
def torch(monkeypatch):
    fake = FakeTorch()
    monkeypatch.setitem(sys.modules, "torch", fake)
    return fake


def names(log):
    return [tuple(getattr(x, "name", x) for x in entry) for entry in log]


def test_a_copy_to_the_host_waits_for_the_compute_stream(torch):
    copies = CudaCopies()
    assert copies.torch is torch and copies.stream.name == "copy"
    done = copies.to_host(Tensor(torch, "dev"), np.zeros(2, np.float32))
    assert done.name == "ev2"
    assert names(torch.log) == [("record", "ev1", torch._current), ("enter", "copy"), ("wait", "copy", "ev1"),
                                ("copy", "host", "dev", True), ("record", "ev2", "copy"), ("exit", "copy")]


def test_the_compute_stream_waits_for_a_copy_to_the_device(torch):
    copies = CudaCopies()
    done = copies.to_device(np.zeros(2, np.float32), Tensor(torch, "dev"))
    assert done.name == "ev1"
    assert names(torch.log) == [("enter", "copy"), ("copy", "dev", "host", True), ("record", "ev1", "copy"),
                                ("exit", "copy"), ("wait", "compute", "ev1")]


def test_written_and_done(torch):
    copies = CudaCopies()
    ev = copies.written()
    assert names(torch.log) == [("record", "ev1", torch._current)]
    assert copies.done(None) is True and copies.done(ev) is False
    ev.passed = True
    assert copies.done(ev) is True


def test_device_buffers_get_cuda_copies_and_pinned_mirrors_by_default(torch):
    host = pinned_host_array(5)
    assert torch.log == [("empty", 5, "float32", True)] and host.shape == (5,) and host.dtype == np.float32
    xb = ExchangeBuffer(FakeCudaArray(np.zeros(4, np.float32)), "staged")
    assert isinstance(xb.copies, CudaCopies) and xb.host.shape == (4,)
    assert torch.log[-1] == ("empty", 4, "float32", True)
    assert isinstance(ExchangeBuffer(FakeCudaArray(np.zeros(4, np.float32)), "direct").copies, CudaCopies)
    assert ExchangeBuffer(np.zeros(4, np.float32), "host").copies is None
    mine = SyncCopies(lambda d, h: None, lambda h, d: None)
    assert ExchangeBuffer(np.zeros(4, np.float32), "host", copies=mine).copies is mine
    xb = ExchangeBuffer(FakeCudaArray(np.zeros(4, np.float32)), "direct", copies=mine)
    assert xb.copies is mine and xb.host is None


def test_sync_copies_are_done_at_once():
    log = []
    c = SyncCopies(lambda d, h: log.append(("to_host", d, h)), lambda h, d: log.append(("to_device", h, d)))
    assert c.to_host("d", "h") is None and c.to_device("h", "d") is None
    assert log == [("to_host", "d", "h"), ("to_device", "h", "d")]
    assert c.written() is None and c.done(object()) is True

