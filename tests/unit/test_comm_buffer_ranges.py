"""hpcps.comm.buffers: the transport asked for (flag over environment) and its error line, and the
waits of ExchangeBuffer (before_send, host_array) that must not hand MPI a range before its copy is done."""

import numpy as np
import pytest

from hpcps.comm.buffers import ExchangeBuffer, TransportError, requested_transport
from tests.fakes import FakeCudaArray, fake_to_device, fake_to_host


class SlowCopies:
    """A copy to the host completes on the third poll of its handle; done(None) is true at once."""

    def __init__(self):
        self.polls, self.pending = 0, None

    def to_host(self, dev, host):
        self.pending = lambda: fake_to_host(dev, host)
        return "copy"

    def to_device(self, host, dev):
        fake_to_device(host, dev)

    def done(self, handle):
        if handle is None:
            return True
        self.polls += 1
        if self.polls >= 3 and self.pending is not None:
            self.pending()
            self.pending = None
        return self.pending is None


def test_a_flag_other_than_auto_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("HPCPS_GPU_TRANSPORT", "direct")
    assert requested_transport("staged") == "staged" and requested_transport("host") == "host"
    assert requested_transport("auto") == "direct"
    monkeypatch.delenv("HPCPS_GPU_TRANSPORT")
    assert requested_transport("auto") == "auto"


def test_a_bogus_flag_is_named_with_the_choices(monkeypatch):
    monkeypatch.setenv("HPCPS_GPU_TRANSPORT", "staged")
    with pytest.raises(TransportError) as e:
        requested_transport("fast")
    assert str(e.value) == ("--gpu-transport: unknown GPU transport 'fast'; choose one of auto, host, direct, "
                            "staged")
    monkeypatch.setenv("HPCPS_GPU_TRANSPORT", "gpu")
    with pytest.raises(TransportError) as e:
        requested_transport("auto")
    assert str(e.value).startswith("HPCPS_GPU_TRANSPORT: unknown GPU transport 'gpu'; choose one of auto, host")


def staged(mem, copies):
    return ExchangeBuffer(FakeCudaArray(mem), "staged", copies=copies, host_alloc=lambda n: np.zeros(n, np.float32))


def test_before_send_returns_once_the_copy_to_the_mirror_is_done():
    mem = np.arange(1, 7, dtype=np.float32)
    copies = SlowCopies()
    xb = staged(mem, copies)
    xb.before_send(1, 4)
    assert copies.polls == 3 and xb.view(0, 6).tolist() == [0, 2, 3, 4, 0, 0]      # that range only


def test_before_send_of_a_host_buffer_does_not_wait():
    mem = np.arange(4, dtype=np.float32)
    xb = ExchangeBuffer(mem, "host")
    xb.before_send(0, 4)
    assert np.shares_memory(xb.view(0, 4), mem)


def test_host_array_waits_for_its_copy():
    mem = np.arange(6, dtype=np.float32)
    copies = SlowCopies()
    out = np.zeros(2, np.float32)
    got = staged(mem, copies).host_array(2, 4, out)
    assert got is out and out.tolist() == [2, 3] and copies.polls == 3


def test_a_host_buffer_is_written_in_place():
    mem = np.zeros(5, dtype=np.float32)
    ExchangeBuffer(mem, "host").write_from_host(1, 3, np.array([4, 5], np.float32))
    assert mem.tolist() == [0, 4, 5, 0, 0]


def test_refusals_name_the_way_out(monkeypatch):
    from hpcps.comm.buffers import choose_transport
    monkeypatch.delenv("HPCPS_GPU_TRANSPORT", raising=False)
    with pytest.raises(TransportError) as e:
        choose_transport("host", on_device=True)
    assert str(e.value) == "transport 'host' cannot move device buffers; use direct or staged"
    with pytest.raises(TransportError) as e:
        choose_transport("direct", on_device=True, cuda_aware=lambda: False)
    assert str(e.value) == ("GPU transport 'direct' needs an MPI that can read device memory, and this one cannot "
                            "(docs/gpu.md); use staged, or launch with a CUDA-aware MPI")
