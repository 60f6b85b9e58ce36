"""A server's state for one shard: the authoritative parameters, a receive row per worker, the optimiser."""

from __future__ import annotations

import numpy as np

from hpcps.config.job import OptimizerConfig
from hpcps.ps.optim import make_shard_optimizer
from hpcps.ps.sharding import Shard


def aggregation_weights(batches: list[int]) -> np.ndarray:
    """Worker i's mean gradient counts k_i / sum(k): the weighted sum is the mean over all samples."""
    k = np.asarray(batches, dtype=np.float64)
    return (k / k.sum()).astype(np.float32)


class ServerShard:
    """params: the shard's authoritative values. With local=(params view, gradient view, row) the
    server shares its rank's own worker buffers (host memory): the worker computes with the server's
    parameters in place and the server reads that worker's gradient in place, so a colocated pair
    moves nothing. Under BSP that is safe: the update runs after the worker's backward pass and
    before the next pull."""

    def __init__(self, shard: Shard, initial: np.ndarray, batches: list[int], optimizer: OptimizerConfig,
                 local: tuple[np.ndarray, np.ndarray, int] | None = None):
        self.shard = shard
        self.in_worker_buffer = local is not None
        if local is None:
            self.params = np.array(initial, dtype=np.float32, copy=True)
            self.local_grad, self.local_row = None, None
        else:
            self.params, self.local_grad, self.local_row = local
            self.params[:] = initial
        # One row per worker, so pushes land without copies and aggregation is one matrix-vector product.
        self.pushes = np.zeros((len(batches), shard.size), dtype=np.float32)
        self.grad = np.zeros(shard.size, dtype=np.float32)
        self.weights = aggregation_weights(batches)
        if self.local_row is not None:
            self.local_weight = self.weights[self.local_row]
            self.weights = self.weights.copy()
            self.weights[self.local_row] = 0.0       # that row stays empty: the gradient is read in place
            self._scaled = np.empty(shard.size, dtype=np.float32)
        self.optimizer = make_shard_optimizer(optimizer, self.params, self.grad)

    def aggregate_and_step(self) -> None:
        np.dot(self.weights, self.pushes, out=self.grad)
        if self.local_grad is not None:
            np.multiply(self.local_grad, self.local_weight, out=self._scaled)
            self.grad += self._scaled
        self.optimizer.step()
