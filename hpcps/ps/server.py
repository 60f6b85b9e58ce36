"""What a server holds for one piece of its shard: the authoritative parameters, a float32 row per
worker, the optimiser, and how many pushes of the current iteration are in."""

from __future__ import annotations

import numpy as np
import torch

from hpcps.config.job import OptimizerConfig
from hpcps.ps.codec import Codec
from hpcps.ps.optim import make_shard_optimizer
from hpcps.ps.plan import Piece


def aggregation_weights(batches: list[int]) -> np.ndarray:
    """Worker i's mean gradient counts k_i / sum(k): the weighted sum is the mean over all samples."""
    k = np.asarray(batches, dtype=np.float64)
    return (k / k.sum()).astype(np.float32)


class NonFiniteGradient(FloatingPointError):
    """A server's gradient for a piece holds a NaN or an infinity; iteration: the step (counted from 0)
    it belongs to, where the server knows it (ssp, asp), else None (bsp: the rank's own iteration)."""

    def __init__(self, message: str, iteration: int | None = None):
        super().__init__(message)
        self.iteration = iteration


def check_finite(grad: torch.Tensor, piece: Piece, iteration: int | None = None,
                 what: str = "aggregated gradient") -> None:
    """Raise NonFiniteGradient unless every value of grad is finite. One sum is the cheap test: a NaN or
    an infinity anywhere makes it non-finite (so does a sum past float32's range, which no trainable
    gradient reaches). Called before the step, which is then not taken: the parameters stay as the
    last good step left them."""
    if not torch.isfinite(grad.sum()):
        bad = int((~torch.isfinite(grad)).sum())
        raise NonFiniteGradient(f"non-finite {what} in piece {piece.index} "
                                f"(elements {piece.start}..{piece.stop - 1}, {bad} not finite)", iteration)


class _PieceState:
    """What every policy's server holds for a piece: its parameters, the optimiser stepping them on
    `grad`, the workers' aggregation weights and push codecs, and what a checkpoint reads and writes
    of the optimiser."""

    def __init__(self, piece: Piece, initial: np.ndarray, batches: list[int], optimizer: OptimizerConfig,
                 codecs: list[Codec] | None):
        self.piece = piece
        self.params = np.array(initial, dtype=np.float32, copy=True)
        self.grad = np.zeros(piece.size, dtype=np.float32)
        self.weights = torch.from_numpy(aggregation_weights(batches))
        self._grad_t = torch.from_numpy(self.grad)
        self.optimizer = make_shard_optimizer(optimizer, self.params, self.grad)
        self.codecs = codecs or [Codec() for _ in batches]
        self.n_workers = len(batches)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimiser's state of this piece: per-element arrays (shape (size,), e.g. SGD's
        momentum_buffer, Adam's exp_avg and exp_avg_sq) and scalars (shape (), e.g. Adam's step). Views
        of the live state: copy what must outlive the next step. Empty before the first step."""
        param = self.optimizer.param_groups[0]["params"][0]
        out = {}
        for key, value in self.optimizer.state.get(param, {}).items():
            if value is None:
                continue
            arr = value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if arr.shape not in ((), (self.piece.size,)):
                raise ValueError(f"optimiser state {key!r} has shape {arr.shape}; a checkpoint takes only "
                                 f"per-element arrays ({self.piece.size},) and scalars")
            out[key] = arr
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the optimiser's state by state (what optimizer_state() returned, possibly for another
        cut of the vector: any arrays of this piece's size)."""
        param = self.optimizer.param_groups[0]["params"][0]
        restored = {}
        for key, value in state.items():
            arr = np.array(value, copy=True)
            if arr.shape not in ((), (self.piece.size,)):
                raise ValueError(f"optimiser state {key!r} has shape {arr.shape}, expected () or ({self.piece.size},)")
            restored[key] = torch.from_numpy(arr)
        self.optimizer.state[param] = restored


class ServedPiece(_PieceState):
    """One piece of a shard under bsp. Pushes land in rows[worker] (decoded by that worker's codec); once
    every worker's push is in, aggregate_and_step() takes the weighted mean of the rows and steps the
    optimiser on the piece. SGD, Adam and AdamW act element by element, so stepping per piece is the
    whole-vector step."""

    def __init__(self, piece: Piece, initial: np.ndarray, batches: list[int], optimizer: OptimizerConfig,
                 codecs: list[Codec] | None = None):
        super().__init__(piece, initial, batches, optimizer, codecs)
        self.rows = np.zeros((len(batches), piece.size), dtype=np.float32)
        self.wires = [c.receive_buffer(self.rows[i]) for i, c in enumerate(self.codecs)]
        self._rows_t = torch.from_numpy(self.rows)
        self.received = 0               # pushes of the current iteration that are in

    def push_arrived(self, row: int) -> bool:
        """Worker row's push is in wires[row]: decode it. Returns whether the piece has every push."""
        self.codecs[row].decode_into(self.wires[row], self.rows[row])
        self.received += 1
        return self.received == len(self.rows)

    def aggregate_and_step(self) -> None:
        # torch's matrix-vector product uses the rank's intra-op threads: summation on several cores.
        torch.mm(self.weights[None], self._rows_t, out=self._grad_t[None])
        check_finite(self._grad_t, self.piece)
        self.optimizer.step()
        self.received = 0


class RoundPiece(_PieceState):
    """A piece under bounded staleness (ssp): pushes of round r land in row set r mod rounds; once every
    worker's push of the oldest open round is in, aggregate_round() takes their weighted mean and steps,
    exactly as ServedPiece does (the same float32 product on the same values: with one row set and
    every worker in step, the same bits)."""

    def __init__(self, piece: Piece, initial: np.ndarray, batches: list[int], optimizer: OptimizerConfig,
                 codecs: list[Codec] | None = None, rounds: int = 1):
        super().__init__(piece, initial, batches, optimizer, codecs)
        self.version = 0                # rounds aggregated: optimiser steps taken on the piece
        self.rounds = rounds
        self.rows = np.zeros((rounds, len(batches), piece.size), dtype=np.float32)
        self.wires = [[c.receive_buffer(self.rows[s, i]) for i, c in enumerate(self.codecs)] for s in range(rounds)]
        self._sets_t = [torch.from_numpy(self.rows[s]) for s in range(rounds)]
        self.received = np.zeros(rounds, dtype=np.int64)

    def row_set(self, round_: int) -> int:
        return round_ % self.rounds

    def set_free(self, round_: int) -> bool:
        """Whether round's rows may be written: the round that used them last is aggregated."""
        return round_ - self.rounds < self.version

    def push_arrived(self, round_: int, row: int) -> None:
        s = self.row_set(round_)
        self.codecs[row].decode_into(self.wires[s][row], self.rows[s, row])
        self.received[s] += 1

    def push_copied(self, round_: int) -> None:
        """A push was written into rows[row_set(round_)] directly (a worker on this rank)."""
        self.received[self.row_set(round_)] += 1

    def round_complete(self) -> bool:
        """Every worker's push of the round that makes the next version is in."""
        return self.received[self.row_set(self.version)] == self.n_workers

    def aggregate_round(self) -> None:
        s = self.row_set(self.version)
        torch.mm(self.weights[None], self._sets_t[s], out=self._grad_t[None])
        check_finite(self._grad_t, self.piece, self.version)
        self.optimizer.step()
        self.received[s] = 0
        self.version += 1


class AsyncPiece(_PieceState):
    """A piece under asynchronous training (asp): every push is one optimiser step on that worker's
    gradient scaled by its weight k_i / sum(k) (SGD without momentum: a round of pushes moves the
    parameters as one bsp step would; docs/runtime.md says what momentum and Adam do)."""

    def __init__(self, piece: Piece, initial: np.ndarray, batches: list[int], optimizer: OptimizerConfig,
                 codecs: list[Codec] | None = None):
        super().__init__(piece, initial, batches, optimizer, codecs)
        self.version = 0                # pushes applied: optimiser steps taken on the piece
        self.rows = np.zeros((len(batches), piece.size), dtype=np.float32)
        self.wires = [c.receive_buffer(self.rows[i]) for i, c in enumerate(self.codecs)]
        self._rows_t = torch.from_numpy(self.rows)
        self.applied = np.zeros(len(batches), dtype=np.int64)    # pushes applied, per worker

    def push_arrived(self, row: int) -> None:
        self.codecs[row].decode_into(self.wires[row], self.rows[row])

    def apply(self, row: int) -> int:
        """Step on worker row's push. Returns the version it was applied to."""
        torch.mul(self._rows_t[row], self.weights[row], out=self._grad_t)
        check_finite(self._grad_t, self.piece, int(self.applied[row]), f"gradient of worker {row}")
        self.optimizer.step()
        self.applied[row] += 1
        self.version += 1
        return self.version - 1
