"""How a worker's flat parameter and gradient buffers meet MPI, piece by piece.

- host: NumPy arrays (CPU workers); MPI reads and writes them directly.
- direct: device arrays (torch CUDA tensors, CuPy, anything exposing __cuda_array_interface__) handed
  to a CUDA-aware MPI as they are, once the kernels that wrote them are done.
- staged: device arrays copied through page-locked host mirrors, for an MPI that is not CUDA-aware.
  Copies run on a CUDA stream of their own, so a gradient piece travels to the host while the backward
  pass goes on, and a received piece travels to the device while earlier layers compute; MPI reads a
  mirror only after its copy has finished (an event), and the compute stream waits for a copy into the
  device before it reads the piece.

choose_transport() picks direct or staged for device buffers from what the MPI reports; the
HPCPS_GPU_TRANSPORT environment variable (direct, staged) or the --gpu-transport flag overrides it.
Asking for direct on an MPI that cannot read device memory is refused at start-up.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np

TRANSPORTS = ("auto", "host", "direct", "staged")
TRANSPORT_ENV = "HPCPS_GPU_TRANSPORT"


class TransportError(ValueError):
    """A transport that cannot work here (asked for on the command line or in the environment)."""


def is_device_array(a: Any) -> bool:
    return hasattr(a, "__cuda_array_interface__")


def mpi_is_cuda_aware() -> bool:
    """Whether the MPI library can read device memory. Unknown counts as no (staging is always safe)."""
    from mpi4py import MPI
    version = MPI.Get_library_version()
    if "Open MPI" in version:
        try:
            out = subprocess.run(["ompi_info", "--parsable", "--all"], capture_output=True, text=True,
                                 timeout=20).stdout
            return "mpi_built_with_cuda_support:value:true" in out
        except (OSError, subprocess.TimeoutExpired):
            return False
    if "MPICH" in version:
        # MPICH built with CUDA reports it through MPIR_CVAR_ENABLE_GPU; the PyPI wheel is not.
        return os.environ.get("MPIR_CVAR_ENABLE_GPU", "0") == "1"
    if "MVAPICH" in version:
        return os.environ.get("MV2_USE_CUDA", "0") == "1"
    return False


def requested_transport(flag: str) -> str:
    """The transport asked for: the flag, or HPCPS_GPU_TRANSPORT when the flag is auto."""
    requested = os.environ.get(TRANSPORT_ENV, flag) if flag == "auto" else flag
    if requested not in TRANSPORTS:
        source = TRANSPORT_ENV if flag == "auto" else "--gpu-transport"
        raise TransportError(f"{source}: unknown GPU transport {requested!r}; choose one of {', '.join(TRANSPORTS)}")
    return requested


def choose_transport(requested: str, on_device: bool, cuda_aware: Callable[[], bool] = mpi_is_cuda_aware) -> str:
    requested = requested_transport(requested)
    if not on_device:
        return "host"
    if requested == "auto":
        return "direct" if cuda_aware() else "staged"
    if requested == "host":
        raise TransportError("transport 'host' cannot move device buffers; use direct or staged")
    if requested == "direct" and not cuda_aware():
        raise TransportError("GPU transport 'direct' needs an MPI that can read device memory, and this one "
                             "cannot (docs/gpu.md); use staged, or launch with a CUDA-aware MPI")
    return requested


class SyncCopies:
    """Device-host copies done at once by two functions (tests use it with a fake device array)."""

    def __init__(self, to_host: Callable[[Any, np.ndarray], None], to_device: Callable[[np.ndarray, Any], None]):
        self._to_host, self._to_device = to_host, to_device

    def to_host(self, dev, host: np.ndarray):
        self._to_host(dev, host)

    def to_device(self, host: np.ndarray, dev):
        self._to_device(host, dev)

    def written(self):
        return None

    def done(self, handle) -> bool:
        return True


class CudaCopies:
    """Copies between torch CUDA tensors and pinned host memory on a stream of their own.

    Every method returns an event (or None); done() asks whether it has passed. A copy to the host first
    waits for what the compute stream has queued so far (the kernels that wrote the gradient); the
    compute stream waits for a copy to the device before its next kernels (which read the parameters)."""

    def __init__(self):
        import torch
        self.torch = torch
        self.stream = torch.cuda.Stream()

    def _after_compute(self):
        ev = self.torch.cuda.Event()
        ev.record(self.torch.cuda.current_stream())
        return ev

    def to_host(self, dev, host: np.ndarray):
        written = self._after_compute()
        with self.torch.cuda.stream(self.stream):
            self.stream.wait_event(written)
            self.torch.from_numpy(host).copy_(dev, non_blocking=True)
            done = self.torch.cuda.Event()
            done.record(self.stream)
        return done

    def to_device(self, host: np.ndarray, dev):
        with self.torch.cuda.stream(self.stream):
            dev.copy_(self.torch.from_numpy(host), non_blocking=True)
            done = self.torch.cuda.Event()
            done.record(self.stream)
        self.torch.cuda.current_stream().wait_event(done)
        return done

    def written(self):
        return self._after_compute()

    def done(self, handle) -> bool:
        return handle is None or handle.query()


def pinned_host_array(n: int) -> np.ndarray:
    """A float32 host array in page-locked memory (device copies at full speed, and asynchronous)."""
    import torch
    return torch.empty(n, dtype=torch.float32, pin_memory=True).numpy()


class ExchangeBuffer:
    """One flat buffer (parameters or gradients) as MPI sees it, range by range.

    begin_send(start, stop) starts making a range readable by MPI and returns a handle that ready()
    tells about; view(start, stop) is what to give MPI; after_recv(start, stop) makes a range MPI
    received visible to the device. 'host' needs none of it."""

    def __init__(self, buf: Any, transport: str, copies=None, host_alloc: Callable[[int], np.ndarray] | None = None):
        self.buf, self.transport = buf, transport
        self.copies = copies if copies is not None or transport == "host" else CudaCopies()
        self.host = None
        if transport == "staged":
            n = buf.shape[0]
            self.host = host_alloc(n) if host_alloc else pinned_host_array(n)

    def view(self, start: int, stop: int):
        """What to give MPI for elements [start, stop)."""
        return self.host[start:stop] if self.host is not None else self.buf[start:stop]

    def begin_send(self, start: int, stop: int):
        if self.transport == "staged":
            return self.copies.to_host(self.buf[start:stop], self.host[start:stop])
        if self.transport == "direct":
            return self.copies.written()    # kernels writing the buffer must finish before MPI reads it
        return None

    def ready(self, handle) -> bool:
        return handle is None or self.copies.done(handle)

    def before_send(self, start: int, stop: int) -> None:
        """begin_send and wait for it."""
        handle = self.begin_send(start, stop)
        while not self.ready(handle):
            pass

    def after_recv(self, start: int, stop: int) -> None:
        if self.host is not None:
            self.copies.to_device(self.host[start:stop], self.buf[start:stop])

    def host_array(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Elements [start, stop) in host memory: a view for 'host', else copied into out (waited for)."""
        if self.transport == "host":
            return self.buf[start:stop]
        handle = self.copies.to_host(self.buf[start:stop], out)
        while not self.copies.done(handle):
            pass
        return out

    def write_from_host(self, start: int, stop: int, src: np.ndarray) -> None:
        """Copy host data into elements [start, stop) (a rank serving itself)."""
        if self.transport == "host":
            self.buf[start:stop] = src
        else:
            self.copies.to_device(src, self.buf[start:stop])
