"""Server-side optimisers: PyTorch's own, applied to one shard of the flat parameter vector.

SGD, Adam and AdamW act element by element, so running them per shard gives exactly the update a
single process would make on the whole vector.
"""

from __future__ import annotations

import numpy as np
import torch

from hpcps.config.job import OptimizerConfig


def make_optimizer(cfg: OptimizerConfig, params):
    """The configured PyTorch optimiser over params (a whole model, or one shard)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def make_shard_optimizer(cfg: OptimizerConfig, shard_params: np.ndarray, shard_grad: np.ndarray):
    """An optimiser whose step() updates shard_params in place from shard_grad (both float32, 1-D)."""
    param = torch.nn.Parameter(torch.from_numpy(shard_params))  # shares memory with shard_params
    param.grad = torch.from_numpy(shard_grad)
    return make_optimizer(cfg, [param])
