"""How a worker's flat parameter and gradient buffers meet MPI.

- host: NumPy arrays (CPU workers); MPI reads and writes them directly.
- direct: device arrays (CuPy, or anything exposing __cuda_array_interface__) handed to a CUDA-aware
  MPI as they are.
- staged: device arrays copied through pinned host buffers, for an MPI that is not CUDA-aware.

choose_transport() picks direct or staged for device buffers from what the MPI reports; the
HPCPS_GPU_TRANSPORT environment variable (direct, staged) or the --gpu-transport flag overrides it.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Callable

import numpy as np

TRANSPORTS = ("auto", "host", "direct", "staged")


def is_device_array(a: Any) -> bool:
    return hasattr(a, "__cuda_array_interface__")


def mpi_is_cuda_aware() -> bool:
    """Whether the MPI library can read device memory. Unknown counts as no (staging is always safe)."""
    from mpi4py import MPI
    version = MPI.Get_library_version()
    if "Open MPI" in version:
        try:
            out = subprocess.run(["ompi_info", "--parsable", "--all"], capture_output=True, text=True, timeout=20).stdout
            return "mpi_built_with_cuda_support:value:true" in out
        except (OSError, subprocess.TimeoutExpired):
            return False
    if "MPICH" in version:
        # MPICH built with CUDA reports it through MPIR_CVAR_ENABLE_GPU; the PyPI wheel is not.
        return os.environ.get("MPIR_CVAR_ENABLE_GPU", "0") == "1"
    if "MVAPICH" in version:
        return os.environ.get("MV2_USE_CUDA", "0") == "1"
    return False


def choose_transport(requested: str, on_device: bool) -> str:
    requested = os.environ.get("HPCPS_GPU_TRANSPORT", requested) if requested == "auto" else requested
    if requested not in TRANSPORTS:
        raise ValueError(f"unknown GPU transport {requested!r}; choose one of {', '.join(TRANSPORTS)}")
    if not on_device:
        return "host"
    if requested == "auto":
        return "direct" if mpi_is_cuda_aware() else "staged"
    if requested == "host":
        raise ValueError("transport 'host' cannot move device buffers; use direct or staged")
    return requested


def _cupy_to_host(dev, host: np.ndarray) -> None:
    dev.get(out=host)


def _cupy_to_device(host: np.ndarray, dev) -> None:
    dev.set(host)


class ExchangeBuffer:
    """One flat buffer (parameters or gradients) as MPI sees it, shard by shard.

    For 'staged', data crosses a pinned host mirror: before_send copies a device range out,
    after_recv copies a received range in. 'host' and 'direct' hand MPI the buffer itself.
    """

    def __init__(self, buf: Any, transport: str,
                 to_host: Callable[[Any, np.ndarray], None] = _cupy_to_host,
                 to_device: Callable[[np.ndarray, Any], None] = _cupy_to_device,
                 host_alloc: Callable[[int], np.ndarray] | None = None,
                 synchronize: Callable[[], None] | None = None):
        self.buf, self.transport = buf, transport
        self.to_host, self.to_device = to_host, to_device
        self.synchronize = synchronize or (lambda: None)
        self.host = None
        if transport == "staged":
            n = buf.shape[0]
            self.host = host_alloc(n) if host_alloc else pinned_host_array(n)

    def view(self, start: int, stop: int):
        """What to give MPI for elements [start, stop)."""
        return self.host[start:stop] if self.host is not None else self.buf[start:stop]

    def before_send(self, start: int, stop: int) -> None:
        if self.host is not None:
            self.to_host(self.buf[start:stop], self.host[start:stop])
        elif self.transport == "direct":
            self.synchronize()  # kernels writing the buffer must finish before MPI reads it

    def after_recv(self, start: int, stop: int) -> None:
        if self.host is not None:
            self.to_device(self.host[start:stop], self.buf[start:stop])


def pinned_host_array(n: int) -> np.ndarray:
    """A float32 host array in page-locked memory (so device copies run at full speed)."""
    import cupy
    mem = cupy.cuda.alloc_pinned_memory(n * 4)
    return np.frombuffer(mem, dtype=np.float32, count=n)


def write_from_host(xbuf: ExchangeBuffer, start: int, stop: int, src: np.ndarray) -> None:
    """Copy host data into elements [start, stop) of the buffer (a rank serving itself)."""
    if xbuf.transport == "host":
        xbuf.buf[start:stop] = src
    else:
        xbuf.to_device(src, xbuf.buf[start:stop])


def read_to_host(xbuf: ExchangeBuffer, start: int, stop: int, dst: np.ndarray) -> None:
    """Copy elements [start, stop) of the buffer into host memory (a rank serving itself)."""
    if xbuf.transport == "host":
        dst[:] = xbuf.buf[start:stop]
    else:
        xbuf.synchronize()
        xbuf.to_host(xbuf.buf[start:stop], dst)
