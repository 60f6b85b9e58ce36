"""A stand-in for a GPU array: exposes __cuda_array_interface__ over host memory.

MPI libraries read the pointer the interface gives, so with host memory behind it the device code
paths (direct hand-over to MPI, staging through host buffers) run for real without a GPU.
"""

from __future__ import annotations

import numpy as np


class FakeCudaArray:
    def __init__(self, host: np.ndarray):
        self.host = host
        self.shape = host.shape
        self.dtype = host.dtype

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.host.shape, "typestr": self.host.dtype.str,
                "data": (self.host.ctypes.data, False), "version": 3, "strides": None}

    def __getitem__(self, key):
        view = self.host[key]
        assert np.shares_memory(view, self.host), "fake device slices must be views"
        return FakeCudaArray(view)


def fake_to_host(dev: FakeCudaArray, host: np.ndarray) -> None:
    host[:] = dev.host


def fake_to_device(host: np.ndarray, dev: FakeCudaArray) -> None:
    dev.host[:] = host


def exchange_buffer(mem: np.ndarray, transport: str):
    """An ExchangeBuffer over mem as the exchange sees a worker's buffer under transport: "host" as it
    is, "direct" and "staged" as a fake device array (staged through plain host mirrors)."""
    from hpcps.comm.buffers import ExchangeBuffer, SyncCopies
    if transport == "host":
        return ExchangeBuffer(mem, "host")
    kw = {"host_alloc": lambda k: np.zeros(k, np.float32)} if transport == "staged" else {}
    return ExchangeBuffer(FakeCudaArray(mem), transport, copies=SyncCopies(fake_to_host, fake_to_device), **kw)


class FakeClock:
    """A clock that stands still until a test moves it (t seconds)."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t

