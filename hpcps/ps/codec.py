"""Codecs: what a worker's gradient piece becomes on the wire, and back into float32 at the server.

The one place where a push's bytes are decided (after Horovod's Compressor and DDP's communication
hooks): the exchange asks a worker's codec for an encoder per piece, sends what it returns, and the
server decodes each push into a float32 row before aggregating (so sums are always float32, whatever
travelled). docs/codecs.md describes each codec.

- none  float32 as it is: no copy on either side (the encoder returns the gradient itself, the server
        receives straight into its row). 4 bytes per value.
- fp16  IEEE half precision, round to nearest even; values past +-65504 are saturated. 2 bytes.
- bf16  bfloat16 (float32's exponent, 8 bits of mantissa), round to nearest even. 2 bytes.
- int8  chunks of INT8_CHUNK values, each with a float32 scale max|x| / 127; a value is
        round(x / scale). 1 byte per value and 4 per chunk.
- sign  one bit per value (x >= 0), packed 8 to a byte, and per chunk of SIGN_CHUNK values a bfloat16
        scale, the chunk's root mean square: a value comes back as +-scale (1-bit SGD, scaled
        signSGD; SignCodec says why the RMS and why these chunks).
- topk  the TOPK_FRACTION of the values largest in magnitude, as int32 positions and float32
        values; the rest come back as 0. 8 bytes per value sent.

Every lossy codec runs with error feedback (EF-SGD): each worker's encoder of a piece keeps what
compression dropped (the residual, float32) and adds it to the next gradient before encoding, so
over iterations the decoded pushes add up to the raw gradients: sum(decoded) + residual = sum(raw).

Pulls (server to worker) may travel as fp16 or bf16 (PULL_CODECS, the job's [exchange] pull_codec),
encoded once per new version of a piece and without error feedback (make_pull_codec says why).
Wire buffers are byte arrays (np.uint8) of exactly wire_nbytes(n), so MPI moves only those bytes.
Encoding and decoding are vectorised NumPy, and PyTorch for the casts to and from 16-bit floats, on
host memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

BYTES_PER_FLOAT32 = 4
FP16_MAX = 65504.0
INT8_CHUNK = 1024        # values per int8 scale: 4 bytes of scale per 1024 bytes of values
SIGN_CHUNK = 64          # values per sign scale: 2 bytes of scale per 8 bytes of signs (25.6x fewer)
BYTES_PER_BFLOAT16 = 2
TOPK_FRACTION = 0.01     # share of a piece's values topk sends


def _torch():
    import torch  # only the 16-bit codecs need it: sizes and plans stay free of PyTorch
    return torch


class Encoder:
    """Per worker and piece: turns a float32 gradient piece into the buffer to send. The buffer
    encode() returns may be the one it returns next time: send it before encoding again (bulk-synchronous
    iterations do: a worker's pushes are through before its next step)."""

    lossy = False

    def encode(self, grad: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> np.ndarray | None:
        """What this encoder carries between iterations (error feedback residual), or None."""
        return None

    def load_state(self, state: np.ndarray | None) -> None:
        """Restore what state() returned (a checkpoint's residual); None for an encoder without state."""
        if state is not None:
            raise ValueError(f"{type(self).__name__} keeps no state")


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

    # -- values without error feedback (pulls) --------------------------------------------------------
    def pack(self, values: np.ndarray, wire: np.ndarray, scratch: np.ndarray | None) -> None:
        """values (float32, n) encoded once into the byte buffer wire (at least wire_nbytes(n) bytes;
        its first wire_nbytes(n) are written), without error feedback. scratch: float32, n, free to use
        (a lossy codec needs it; float32 takes None)."""
        n = values.shape[0]
        wire[:BYTES_PER_FLOAT32 * n].view(np.float32)[:] = values

    def unpack(self, wire: np.ndarray, out: np.ndarray) -> None:
        """What pack() wrote into wire, as float32 values in out."""
        n = out.shape[0]
        out[:] = wire[:BYTES_PER_FLOAT32 * n].view(np.float32)


class _Identity(Encoder):
    def encode(self, grad: np.ndarray) -> np.ndarray:
        return grad


# -- lossy codecs ---------------------------------------------------------------------------------------
class LossyCodec(Codec):
    """A codec that drops information: its encoders keep the residual (error feedback).

    Subclasses give wire_nbytes(n), compress(acc, wire, scratch) (acc: float32, n values to encode;
    scratch: float32, n values free to use) and decode_into(wire, row)."""

    lossy = True

    def encoder(self, n: int) -> Encoder:
        return ErrorFeedbackEncoder(self, n)

    def receive_buffer(self, row: np.ndarray) -> np.ndarray:
        return np.empty(self.wire_nbytes(row.shape[0]), dtype=np.uint8)

    def compress(self, acc: np.ndarray, wire: np.ndarray, scratch: np.ndarray) -> None:
        raise NotImplementedError

    def pack(self, values: np.ndarray, wire: np.ndarray, scratch: np.ndarray | None) -> None:
        assert scratch is not None
        self.compress(values, wire[:self.wire_nbytes(values.shape[0])], scratch)

    def unpack(self, wire: np.ndarray, out: np.ndarray) -> None:
        self.decode_into(wire[:self.wire_nbytes(out.shape[0])], out)

    def roundtrip(self, x: np.ndarray) -> np.ndarray:
        """x encoded and decoded once, without error feedback (for tests and measurements)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        wire = np.empty(self.wire_nbytes(x.shape[0]), dtype=np.uint8)
        self.compress(x, wire, np.empty_like(x))
        out = np.empty_like(x)
        self.decode_into(wire, out)
        return out


class ErrorFeedbackEncoder(Encoder):
    """acc = grad + residual; wire = compress(acc); residual = acc - decode(wire).

    The residual is computed from the same decode the server runs, so what the server applies and
    what the worker keeps add up to what it was given (to float32 rounding). A gradient of zeros on a
    zero residual sends zeros and keeps a zero residual."""

    lossy = True

    def __init__(self, codec: LossyCodec, n: int):
        self.codec, self.n = codec, n
        self.residual = np.zeros(n, dtype=np.float32)
        self.scratch = np.empty(n, dtype=np.float32)
        self.wire = np.empty(codec.wire_nbytes(n), dtype=np.uint8)

    def encode(self, grad: np.ndarray) -> np.ndarray:
        acc = self.residual
        np.add(acc, grad, out=acc)                   # the residual buffer now holds grad + residual
        self.codec.compress(acc, self.wire, self.scratch)
        self.codec.decode_into(self.wire, self.scratch)
        np.subtract(acc, self.scratch, out=acc)      # what this push did not carry
        return self.wire

    def state(self) -> np.ndarray:
        return self.residual.copy()

    def load_state(self, state: np.ndarray | None) -> None:
        if state is None:
            self.residual[:] = 0
            return
        state = np.asarray(state, dtype=np.float32)
        if state.shape != self.residual.shape:
            raise ValueError(f"residual of {state.shape} values for a piece of {self.n}")
        self.residual[:] = state


def _chunks(x: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """x as (full chunks, chunk) and the shorter last chunk (possibly empty); both views."""
    full = x.shape[0] // chunk * chunk
    return x[:full].reshape(-1, chunk), x[full:]


class _SixteenBitCodec(LossyCodec):
    """Two bytes a value on the wire."""

    def wire_nbytes(self, n: int) -> int:
        return 2 * n


class Float16Codec(_SixteenBitCodec):
    name = "fp16"

    def compress(self, acc, wire, scratch) -> None:
        # PyTorch's casts are vectorised (NumPy converts to half precision one value at a time)
        torch = _torch()
        torch.clamp(torch.from_numpy(acc), -FP16_MAX, FP16_MAX, out=torch.from_numpy(scratch))
        torch.from_numpy(wire).view(torch.float16).copy_(torch.from_numpy(scratch))

    def decode_into(self, wire, row) -> None:
        torch = _torch()
        torch.from_numpy(row).copy_(torch.from_numpy(wire).view(torch.float16))


class BFloat16Codec(_SixteenBitCodec):
    name = "bf16"

    def compress(self, acc, wire, scratch) -> None:
        # NumPy has no bfloat16; PyTorch's cast rounds to nearest even
        torch = _torch()
        torch.from_numpy(wire).view(torch.bfloat16).copy_(torch.from_numpy(acc))

    def decode_into(self, wire, row) -> None:
        # bfloat16 is the top half of a float32: widen by shifting the 16 bits up
        np.left_shift(wire.view(np.uint16), 16, out=row.view(np.uint32), dtype=np.uint32)


class Int8Codec(LossyCodec):
    """Wire: the chunks' float32 scales, then one int8 per value."""
    name = "int8"
    chunk = INT8_CHUNK

    def n_chunks(self, n: int) -> int:
        return -(-n // self.chunk)

    def wire_nbytes(self, n: int) -> int:
        return n + BYTES_PER_FLOAT32 * self.n_chunks(n)

    def _split(self, wire: np.ndarray, n: int):
        k = BYTES_PER_FLOAT32 * self.n_chunks(n)
        return wire[:k].view(np.float32), wire[k:].view(np.int8)

    def compress(self, acc, wire, scratch) -> None:
        n = acc.shape[0]
        scales, q = self._split(wire, n)
        np.abs(acc, out=scratch)
        full, tail = _chunks(scratch, self.chunk)
        if full.size:
            np.max(full, axis=1, out=scales[:full.shape[0]])
        if tail.size:
            scales[-1] = tail.max()
        np.divide(scales, np.float32(127), out=scales)
        safe = np.where(scales > 0, scales, np.float32(1))       # a chunk of zeros encodes as zeros
        sf, st = _chunks(scratch, self.chunk)
        af, at = _chunks(acc, self.chunk)
        np.divide(af, safe[:af.shape[0], None], out=sf)
        if at.size:
            np.divide(at, safe[-1], out=st)
        np.rint(scratch, out=scratch)
        np.copyto(q, scratch, casting="unsafe")

    def decode_into(self, wire, row) -> None:
        scales, q = self._split(wire, row.shape[0])
        np.copyto(row, q, casting="safe")
        rf, rt = _chunks(row, self.chunk)
        np.multiply(rf, scales[:rf.shape[0], None], out=rf)
        if rt.size:
            np.multiply(rt, scales[-1], out=rt)


class SignCodec(LossyCodec):
    """Wire: the chunks' scales (root mean square of the chunk, as bfloat16), then the sign bits (1 for
    x >= 0), big-endian within each byte as np.packbits leaves them.

    Why the root mean square and not the mean |x| (the scale closest to the values in squared error):
    a decoded chunk then carries the chunk's whole energy, |decoded| = |x|. With the mean |x| a chunk
    whose values spread widely (a few large gradients among many small ones, usual in a layer's
    weights) sends a fraction of its energy and error feedback hands the rest on over several steps;
    under the server's momentum that lag costs many points of accuracy, more the longer the chunk.
    Error feedback corrects the RMS's overshoot on the small values.
    Why chunks of 64 with a 2-byte scale and not 128 with a 4-byte one (the same 1/8 + 1/32 bytes a
    value, 25.6x fewer than float32): shorter chunks follow the spread of magnitudes within a layer,
    and the scale's bfloat16 rounding (float32's range, 8 bits of mantissa) is error feedback's to
    correct like the rest. On digits (jobs/default.toml, 4 workers, 100 seeds, benchmarks/sign_scale.py,
    results/sign_scale.md) chunks of 128 cost about twice the accuracy of chunks of 64, and chunks
    shorter than 64 gained no more."""
    name = "sign"
    chunk = SIGN_CHUNK

    def n_chunks(self, n: int) -> int:
        return -(-n // self.chunk)

    def wire_nbytes(self, n: int) -> int:
        return -(-n // 8) + BYTES_PER_BFLOAT16 * self.n_chunks(n)

    def _split(self, wire: np.ndarray, n: int):
        k = BYTES_PER_BFLOAT16 * self.n_chunks(n)
        return wire[:k], wire[k:]

    def compress(self, acc, wire, scratch) -> None:
        n = acc.shape[0]
        scale_bytes, bits = self._split(wire, n)
        rms = np.empty(self.n_chunks(n), dtype=np.float32)          # a 64th of the piece
        np.multiply(acc, acc, out=scratch)
        full, tail = _chunks(scratch, self.chunk)
        nf = full.shape[0]
        if full.size:
            np.sum(full, axis=1, out=rms[:nf])
            np.divide(rms[:nf], np.float32(self.chunk), out=rms[:nf])
        if tail.size:
            rms[-1] = tail.sum(dtype=np.float32) / np.float32(tail.size)
        np.sqrt(rms, out=rms)
        torch = _torch()                # its cast to bfloat16 rounds to nearest even (NumPy has none)
        torch.from_numpy(scale_bytes).view(torch.bfloat16).copy_(torch.from_numpy(rms))
        bits[:] = np.packbits(acc >= 0)

    def scales(self, wire: np.ndarray, n: int) -> np.ndarray:
        """The chunks' scales in wire, as float32 (a bfloat16 is the top half of a float32)."""
        scale_bytes, _ = self._split(wire, n)
        return np.left_shift(scale_bytes.view(np.uint16), 16, dtype=np.uint32).view(np.float32)

    def decode_into(self, wire, row) -> None:
        n = row.shape[0]
        scales = self.scales(wire, n)
        _, bits = self._split(wire, n)
        signs = np.unpackbits(bits, count=n)                 # 0 or 1
        np.copyto(row, signs, casting="safe")
        np.multiply(row, np.float32(2), out=row)
        np.subtract(row, np.float32(1), out=row)             # -1 or +1
        rf, rt = _chunks(row, self.chunk)
        np.multiply(rf, scales[:rf.shape[0], None], out=rf)
        if rt.size:
            np.multiply(rt, scales[-1], out=rt)


class TopKCodec(LossyCodec):
    """Wire: k int32 positions, then their k float32 values."""
    name = "topk"
    fraction = TOPK_FRACTION

    def k(self, n: int) -> int:
        return min(n, max(1, int(np.ceil(self.fraction * n))))

    def wire_nbytes(self, n: int) -> int:
        return 8 * self.k(n)

    def _split(self, wire: np.ndarray, n: int):
        k = self.k(n)
        return wire[:4 * k].view(np.int32), wire[4 * k:].view(np.float32)

    def compress(self, acc, wire, scratch) -> None:
        n = acc.shape[0]
        k = self.k(n)
        index, values = self._split(wire, n)
        np.abs(acc, out=scratch)
        top = np.argpartition(scratch, n - k)[n - k:] if k < n else np.arange(n)
        top.sort()
        index[:] = top
        np.take(acc, top, out=values)

    def decode_into(self, wire, row) -> None:
        index, values = self._split(wire, row.shape[0])
        row[:] = 0
        row[index] = values


CODECS: dict[str, type[Codec]] = {"none": Codec, "fp16": Float16Codec, "bf16": BFloat16Codec,
                                  "int8": Int8Codec, "sign": SignCodec, "topk": TopKCodec}


def make_codec(name: str) -> Codec:
    try:
        return CODECS[name]()
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}") from None


# Pull codecs: what a server's values of a piece become on their way to the workers. Only the 16-bit
# floats: a pull carries weights, not gradients, and has no error feedback (below), so it must keep
# each value close on its own.
PULL_CODECS = ("none", "fp16", "bf16")


def make_pull_codec(name: str) -> Codec:
    """The pull codec called name. A server encodes each new version of a piece once, with pack(), and
    every worker, its own included, computes on the same decoded values; the server steps its float32
    values (the master copy), so a pull's rounding never builds up over iterations, as in
    mixed-precision training's float32 master weights: nothing to feed back."""
    if name not in PULL_CODECS:
        raise ValueError(f"unknown pull codec {name!r}; choose one of {', '.join(PULL_CODECS)}")
    return make_codec(name)


def pull_nbytes(codec_name: str) -> Callable[[int], int]:
    """For MessagePlan.build(pull_nbytes=...): values -> bytes on the wire of one pull."""
    return make_pull_codec(codec_name).wire_nbytes


def push_nbytes(codec_names: Sequence[str]) -> Callable[[int, int], int]:
    """For MessagePlan.build(push_nbytes=...): (worker row, values) -> bytes on the wire of that push,
    each worker with its codec (codec_names in schedule order)."""
    codecs = [make_codec(name) for name in codec_names]
    return lambda row, n: codecs[row].wire_nbytes(n)


def worker_codec_names(job, schedule) -> list[str]:
    """Each worker's push codec, in schedule order: its own (a schedule's worker entry may name one),
    else the job's [exchange] codec."""
    return [w.codec or job.exchange.codec for w in schedule.workers]
