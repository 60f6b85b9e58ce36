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


class ServedPiece:
    """One piece of a shard. Pushes land in rows[worker] (decoded by that worker's codec); once every
    worker's push is in, aggregate_and_step() takes the weighted mean of the rows and steps the
    optimiser on the piece. SGD, Adam and AdamW act element by element, so stepping per piece is the
    whole-vector step."""

    def __init__(self, piece: Piece, initial: np.ndarray, batches: list[int], optimizer: OptimizerConfig,
                 codecs: list[Codec] | None = None):
        self.piece = piece
        self.params = np.array(initial, dtype=np.float32, copy=True)
        self.rows = np.zeros((len(batches), piece.size), dtype=np.float32)
        self.codecs = codecs or [Codec() for _ in batches]
        self.wires = [c.receive_buffer(self.rows[i]) for i, c in enumerate(self.codecs)]
        self.grad = np.zeros(piece.size, dtype=np.float32)
        self.weights = torch.from_numpy(aggregation_weights(batches))
        self._rows_t, self._grad_t = torch.from_numpy(self.rows), torch.from_numpy(self.grad)
        self.optimizer = make_shard_optimizer(optimizer, self.params, self.grad)
        self.received = 0               # pushes of the current iteration that are in

    def push_arrived(self, row: int) -> bool:
        """Worker row's push is in wires[row]: decode it. Returns whether the piece has every push."""
        self.codecs[row].decode_into(self.wires[row], self.rows[row])
        self.received += 1
        return self.received == len(self.rows)

    def aggregate_and_step(self) -> None:
        # torch's matrix-vector product uses the rank's intra-op threads: summation on several cores.
        torch.mm(self.weights[None], self._rows_t, out=self._grad_t[None])
        # One sum is the cheap test: a NaN or an infinity anywhere makes it non-finite (so does a sum past
        # float32's range, which no trainable gradient reaches). The step is not taken: the parameters
        # stay as the last good iteration left them.
        if not torch.isfinite(self._grad_t.sum()):
            bad = int(np.count_nonzero(~np.isfinite(self.grad)))
            raise FloatingPointError(f"non-finite aggregated gradient in piece {self.piece.index} "
                                     f"(elements {self.piece.start}..{self.piece.stop - 1}, {bad} not finite)")
        self.optimizer.step()
        self.received = 0

    # -- checkpoints ------------------------------------------------------------------------------------
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
