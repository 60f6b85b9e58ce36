"""Codecs: what a worker's gradient piece becomes on the wire, and back into float32 at the server.

The one place where a push's bytes are decided (after Horovod's Compressor and DDP's communication
hooks): the exchange asks a worker's codec for an encoder per piece, sends what it returns, and the
server decodes each push into a float32 row before aggregating (so sums are always float32, whatever
travelled). A codec that drops information keeps it in its encoder (error feedback) and returns it
with the next gradient.

`none` sends float32 as it is: no copy on either side (the encoder returns the gradient itself, the
server receives straight into its row).
"""

from __future__ import annotations

import numpy as np

BYTES_PER_FLOAT32 = 4


class Encoder:
    """Per worker and piece: turns a float32 gradient piece into the buffer to send."""

    def encode(self, grad: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> np.ndarray | None:
        """What this encoder carries between iterations (error feedback residual), or None."""
        return None


class Codec:
    """A push codec. Stateless: per-piece state lives in its encoders."""

    name = "none"
    lossy = False

    def wire_nbytes(self, n: int) -> int:
        """Bytes on the wire for a piece of n float32 values."""
        return BYTES_PER_FLOAT32 * n

    def encoder(self, n: int) -> Encoder:
        return _Identity()

    def receive_buffer(self, row: np.ndarray) -> np.ndarray:
        """Where the server receives a push whose decoded values go to row (float32, n)."""
        return row

    def decode_into(self, wire: np.ndarray, row: np.ndarray) -> None:
        """Turn a received push into float32 values in row."""
        if wire is not row:
            row[:] = wire


class _Identity(Encoder):
    def encode(self, grad: np.ndarray) -> np.ndarray:
        return grad


CODECS: dict[str, type[Codec]] = {"none": Codec}


def make_codec(name: str) -> Codec:
    try:
        return CODECS[name]()
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}") from None
