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
    def __init__(self, shard: Shard, initial: np.ndarray, batches: list[int], optimizer: OptimizerConfig):
        self.shard = shard
        self.params = np.array(initial, dtype=np.float32, copy=True)
        # One row per worker, so pushes land without copies and aggregation is one matrix-vector product.
        self.pushes = np.zeros((len(batches), shard.size), dtype=np.float32)
        self.grad = np.zeros(shard.size, dtype=np.float32)
        self.weights = aggregation_weights(batches)
        self.optimizer = make_shard_optimizer(optimizer, self.params, self.grad)

    def aggregate_and_step(self) -> None:
        np.dot(self.weights, self.pushes, out=self.grad)
        self.optimizer.step()
