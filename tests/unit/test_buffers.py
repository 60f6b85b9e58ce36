import numpy as np
import pytest

from hpcps.comm.buffers import ExchangeBuffer, SyncCopies, TransportError, choose_transport, is_device_array
from tests.fakes import FakeCudaArray, fake_to_device, fake_to_host


class DeferredCopies:
    """Copies that happen only when the test says so, as a CUDA stream's would: MPI must not read a
    staging buffer before its copy is done."""

    def __init__(self, log):
        self.log, self.queue = log, []

    def to_host(self, dev, host):
        self.log.append("to_host")
        self.queue.append(lambda: fake_to_host(dev, host))
        return len(self.queue)

    def to_device(self, host, dev):
        self.log.append("to_device")
        fake_to_device(host, dev)
        return None

    def written(self):
        self.log.append("written")
        self.queue.append(lambda: None)
        return len(self.queue)

    def run(self):
        while self.queue:
            self.queue.pop(0)()
            self.log.append("ran")

    def done(self, handle):
        return handle is None or not self.queue


def staged(dev, copies):
    return ExchangeBuffer(dev, "staged", copies=copies, host_alloc=lambda n: np.zeros(n, np.float32))


def test_staged_buffer_hands_mpi_host_memory_only_after_the_copy_is_done():
    device_mem = np.arange(8, dtype=np.float32)
    copies = DeferredCopies([])
    xb = staged(FakeCudaArray(device_mem), copies)
    view = xb.view(2, 6)
    assert isinstance(view, np.ndarray) and not np.shares_memory(view, device_mem)
    handle = xb.begin_send(2, 6)
    assert not xb.ready(handle) and not view.any()       # queued on the copy stream, not yet done
    copies.run()
    assert xb.ready(handle) and np.array_equal(view, device_mem[2:6])
    view[:] = -1                                   # as if MPI received into the staging buffer
    xb.after_recv(2, 6)
    assert np.array_equal(device_mem[2:6], [-1] * 4) and device_mem[1] == 1 and device_mem[6] == 6


def test_direct_buffer_hands_mpi_the_device_array_once_the_kernels_that_wrote_it_are_done():
    device_mem = np.zeros(8, dtype=np.float32)
    copies = DeferredCopies([])
    xb = ExchangeBuffer(FakeCudaArray(device_mem), "direct", copies=copies)
    view = xb.view(0, 4)
    assert is_device_array(view) and not isinstance(view, np.ndarray)
    handle = xb.begin_send(0, 4)
    assert copies.log == ["written"] and not xb.ready(handle)
    copies.run()
    assert xb.ready(handle)


@pytest.mark.parametrize("transport", ["direct", "staged"])
def test_local_copies_for_a_rank_serving_itself(transport):
    device_mem = np.zeros(6, dtype=np.float32)
    copies = SyncCopies(fake_to_host, fake_to_device)
    xb = (staged(FakeCudaArray(device_mem), copies) if transport == "staged" else
          ExchangeBuffer(FakeCudaArray(device_mem), "direct", copies=copies))
    xb.write_from_host(1, 4, np.array([7, 8, 9], np.float32))
    assert device_mem.tolist() == [0, 7, 8, 9, 0, 0]
    out = np.zeros(3, np.float32)
    assert xb.host_array(1, 4, out).tolist() == [7, 8, 9]


def test_host_buffers_are_lent_to_mpi_without_copies():
    mem = np.arange(6, dtype=np.float32)
    xb = ExchangeBuffer(mem, "host")
    assert np.shares_memory(xb.view(1, 3), mem) and xb.ready(xb.begin_send(1, 3))
    assert np.shares_memory(xb.host_array(1, 3, np.zeros(2, np.float32)), mem)


def test_transport_choice(monkeypatch):
    monkeypatch.delenv("HPCPS_GPU_TRANSPORT", raising=False)
    assert choose_transport("auto", on_device=False) == "host"
    assert choose_transport("staged", on_device=True) == "staged"
    # the wheel's MPICH is not CUDA-aware, so auto must stage
    assert choose_transport("auto", on_device=True) == "staged"
    assert choose_transport("auto", on_device=True, cuda_aware=lambda: True) == "direct"
    assert choose_transport("direct", on_device=True, cuda_aware=lambda: True) == "direct"
    with pytest.raises(TransportError, match="cannot move device buffers"):
        choose_transport("host", on_device=True)


def test_direct_on_an_mpi_that_cannot_read_device_memory_is_refused(monkeypatch):
    monkeypatch.delenv("HPCPS_GPU_TRANSPORT", raising=False)
    with pytest.raises(TransportError, match="'direct' needs an MPI that can read device memory"):
        choose_transport("direct", on_device=True, cuda_aware=lambda: False)
    monkeypatch.setenv("HPCPS_GPU_TRANSPORT", "direct")
    with pytest.raises(TransportError, match="'direct' needs"):
        choose_transport("auto", on_device=True, cuda_aware=lambda: False)


def test_a_bogus_transport_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("HPCPS_GPU_TRANSPORT", "bogus")
    with pytest.raises(TransportError, match="HPCPS_GPU_TRANSPORT: unknown GPU transport 'bogus'"):
        choose_transport("auto", on_device=False)
