"""What a workload provides to the runtime. Data lives in memory; a batch is gathered by sample index."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def device_of(model: nn.Module) -> torch.device:
    """Where a model's parameters live (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


class Workload:
    """Base for workloads. Subclasses set self.train_x, self.train_y, self.test_x, self.test_y."""

    name = "workload"

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def n_train(self) -> int:
        return len(self.train_x)

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return self.train_x[idx], self.train_y[idx]

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, float]:
        """Mean loss over the batch, and the number of correctly predicted targets (for accuracy)."""
        x, y = batch
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        correct = (logits.detach().argmax(dim=1) == y).sum().item()
        return loss, float(correct)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Metrics on the test set, computed where the model is (its parameters' device)."""
        dev = device_of(model)
        x, y = self.test_x.to(dev), self.test_y.to(dev)
        model.eval()
        logits = model(x)
        model.train()
        return {"test_loss": float(nn.functional.cross_entropy(logits, y)),
                "test_accuracy": float((logits.argmax(dim=1) == y).float().mean())}

    def targets_per_sample(self) -> int:
        """How many predictions one sample makes (sequence models predict one per character)."""
        return 1

    def finish(self, model: nn.Module) -> str | None:
        """Text to print at the end of training, if any."""
        return None
