"""Bind a model's parameters and gradients to two flat buffers, so the exchange moves one contiguous
vector per shard with no packing: MPI receives straight into the parameters and sends straight from
the gradients."""

from __future__ import annotations

import torch
from torch import nn


class FlatModel:
    def __init__(self, model: nn.Module, device: str | torch.device = "cpu"):
        self.model = model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        self.sizes = [p.numel() for p in params]
        self.numel = sum(self.sizes)
        self.params = torch.zeros(self.numel, dtype=torch.float32, device=device)
        self.grads = torch.zeros(self.numel, dtype=torch.float32, device=device)
        offset = 0
        with torch.no_grad():
            for p, n in zip(params, self.sizes):
                if p.dtype != torch.float32:
                    raise TypeError(f"parameters must be float32, got {p.dtype}")
                self.params[offset:offset + n].copy_(p.reshape(-1))
                p.data = self.params[offset:offset + n].view_as(p)
                # A defined .grad is accumulated into in place by backward(), so gradients land here.
                p.grad = self.grads[offset:offset + n].view_as(p)
                offset += n

    def zero_grad(self) -> None:
        self.grads.zero_()
