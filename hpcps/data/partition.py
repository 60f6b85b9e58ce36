"""Each epoch the samples are shuffled (the same way on every rank) and cut into global batches;
worker i takes k_i consecutive samples of each global batch. Workers never overlap within an epoch,
each gets a share of the epoch in proportion to its batch size, and the union of one step's worker
batches is exactly the global batch a single process would have used.
"""

from __future__ import annotations

import numpy as np


def iterations_per_epoch(n_samples: int, global_batch: int) -> int:
    if global_batch > n_samples:
        raise ValueError(f"global batch {global_batch} exceeds the {n_samples} training samples")
    return n_samples // global_batch


def epoch_order(n_samples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_samples)


class EpochPartition:
    """Sample indices for worker batches, iteration by iteration, caching one epoch's order."""

    def __init__(self, n_samples: int, batches: list[int], seed: int):
        self.n_samples = n_samples
        self.offsets = np.concatenate([[0], np.cumsum(batches)]).astype(np.int64)
        self.global_batch = int(self.offsets[-1])
        self.per_epoch = iterations_per_epoch(n_samples, self.global_batch)
        self.seed = seed
        self._epoch, self._order = -1, None

    def indices(self, iteration: int, worker_index: int) -> np.ndarray:
        epoch, step = divmod(iteration, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.n_samples, self.seed, epoch)
        base = step * self.global_batch
        return self._order[base + self.offsets[worker_index]: base + self.offsets[worker_index + 1]]
