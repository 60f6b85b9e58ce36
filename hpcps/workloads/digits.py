"""Handwritten digits (scikit-learn's bundled 8x8 images of 0-9, real data) with a small MLP."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hpcps.workloads.base import Workload
from hpcps.workloads.specs import with_defaults


class DigitsWorkload(Workload):
    name = "digits"

    def __init__(self, model: dict, data: dict, seed: int):
        from sklearn.datasets import load_digits
        model, data = with_defaults(self.name, model, data)
        self.hidden = model["hidden"]
        x, y = load_digits(return_X_y=True)
        rng = np.random.default_rng(seed)  # the same split on every rank
        order = rng.permutation(len(x))
        n_test = int(round(len(x) * data["test_fraction"]))
        test, train = order[:n_test], order[n_test:]
        x = torch.from_numpy((x / 16.0).astype(np.float32))
        y = torch.from_numpy(y.astype(np.int64))
        self.train_x, self.train_y = x[train], y[train]
        self.test_x, self.test_y = x[test], y[test]

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 10))
