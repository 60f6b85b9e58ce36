"""Batches that make the workers finish together: the one balancing rule the strategies share."""

from __future__ import annotations

import numpy as np

ANY_SHARE = float(np.nextafter(0.0, 1.0))   # `least` that keeps every node given more than nothing


def equalise(total: float, fixed: np.ndarray, per_sample: np.ndarray, use: np.ndarray,
             caps: np.ndarray | None = None, least: float = 1.0) -> np.ndarray:
    """Batches k_i, (n_nodes,), with fixed_i + per_sample_i * k_i equal over the used nodes and summing to
    total. A node that would get less than `least` samples is left out and the rest balanced again; a
    node whose memory holds less than its part (caps, per node) gets what it holds. When no balance is
    possible: 1 for each node still used."""
    use = use.copy()
    caps = np.full(len(use), np.inf) if caps is None else np.asarray(caps, dtype=float)
    capped = np.zeros(len(use), dtype=bool)
    for _ in range(2 * len(use)):
        free = use & ~capped
        left = total - caps[capped & use].sum()
        if not free.any() or left <= 0:
            break
        inv = np.where(free, 1.0 / per_sample, 0.0)
        tau = (left + np.sum(np.where(free, fixed / per_sample, 0.0))) / inv.sum()
        k = np.where(free, (tau - fixed) / per_sample, 0.0)
        over = free & (k > caps)
        if over.any():
            capped |= over
            continue
        if (k[free] >= least).all() or free.sum() == 1:
            return np.where(capped & use, caps, np.maximum(k, 0.0))
        use &= ~(free & (k < least))
    return np.where(capped & use, caps, use.astype(float))
