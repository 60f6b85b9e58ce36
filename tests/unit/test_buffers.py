import numpy as np
import pytest

from hpcps.comm.buffers import ExchangeBuffer, choose_transport, is_device_array, read_to_host, write_from_host
from tests.fakes import FakeCudaArray, fake_to_device, fake_to_host


def staged(dev, log):
    def to_host(d, h):
        log.append("to_host")
        fake_to_host(d, h)

    def to_device(h, d):
        log.append("to_device")
        fake_to_device(h, d)
    return ExchangeBuffer(dev, "staged", to_host=to_host, to_device=to_device,
                          host_alloc=lambda n: np.zeros(n, np.float32))


def test_staged_buffer_hands_mpi_host_memory_and_copies_around_it():
    device_mem = np.arange(8, dtype=np.float32)
    log = []
    xb = staged(FakeCudaArray(device_mem), log)
    view = xb.view(2, 6)
    assert isinstance(view, np.ndarray) and not np.shares_memory(view, device_mem)
    xb.before_send(2, 6)
    assert log == ["to_host"] and np.array_equal(view, device_mem[2:6])
    view[:] = -1                                   # as if MPI received into the staging buffer
    xb.after_recv(2, 6)
    assert np.array_equal(device_mem[2:6], [-1] * 4) and device_mem[1] == 1 and device_mem[6] == 6


def test_direct_buffer_hands_mpi_the_device_array_after_synchronising():
    device_mem = np.zeros(8, dtype=np.float32)
    syncs = []
    xb = ExchangeBuffer(FakeCudaArray(device_mem), "direct", to_host=fake_to_host, to_device=fake_to_device,
                        synchronize=lambda: syncs.append(1))
    view = xb.view(0, 4)
    assert is_device_array(view) and not isinstance(view, np.ndarray)
    xb.before_send(0, 4)
    assert syncs == [1]


@pytest.mark.parametrize("transport", ["direct", "staged"])
def test_local_copies_for_a_rank_serving_itself(transport):
    device_mem = np.zeros(6, dtype=np.float32)
    xb = (staged(FakeCudaArray(device_mem), []) if transport == "staged" else
          ExchangeBuffer(FakeCudaArray(device_mem), "direct", to_host=fake_to_host, to_device=fake_to_device))
    write_from_host(xb, 1, 4, np.array([7, 8, 9], np.float32))
    assert device_mem.tolist() == [0, 7, 8, 9, 0, 0]
    out = np.zeros(3, np.float32)
    read_to_host(xb, 1, 4, out)
    assert out.tolist() == [7, 8, 9]


def test_transport_choice(monkeypatch):
    monkeypatch.delenv("HPCPS_GPU_TRANSPORT", raising=False)
    assert choose_transport("auto", on_device=False) == "host"
    assert choose_transport("staged", on_device=True) == "staged"
    # the wheel's MPICH is not CUDA-aware, so auto must stage
    assert choose_transport("auto", on_device=True) == "staged"
    monkeypatch.setenv("HPCPS_GPU_TRANSPORT", "direct")
    assert choose_transport("auto", on_device=True) == "direct"
    with pytest.raises(ValueError):
        choose_transport("host", on_device=True)
