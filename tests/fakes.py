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
