"""A CIFAR-shaped small ResNet (3x32x32 inputs, 10 classes) on generated data, for throughput work.

The images are noise, labelled by a fixed random linear teacher on a 4x4 average-pooled copy, so the
task is learnable and a loss that falls shows the training is right. GroupNorm instead of BatchNorm:
workers hold unequal batches (down to one sample), which BatchNorm's statistics cannot take, and
GroupNorm has no running buffers that would need their own synchronisation.
"""

from __future__ import annotations

import torch
from torch import nn

from hpcps.workloads.base import Workload
from hpcps.workloads.specs import with_defaults


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        groups = min(8, c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(groups, c_out)))

    def forward(self, x):
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.skip(x))


def small_resnet(width: int = 16, blocks: int = 1, classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.GroupNorm(min(8, width), width), nn.ReLU()]
    c = width
    for stage, stride in enumerate((1, 2, 2)):
        c_out = width * 2 ** stage
        for b in range(blocks):
            layers.append(_Block(c, c_out, stride if b == 0 else 1))
            c = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


class CifarResNetWorkload(Workload):
    name = "cifar-resnet"

    def __init__(self, model: dict, data: dict, seed: int):
        model, data = with_defaults(self.name, model, data)
        self.width, self.blocks = model["width"], model["blocks"]
        g = torch.Generator().manual_seed(seed)
        n, n_test = data["samples"], data["test_samples"]
        x = torch.randn(n + n_test, 3, 32, 32, generator=g)
        teacher = torch.randn(3 * 4 * 4, 10, generator=g)
        y = (nn.functional.avg_pool2d(x, 8).flatten(1) @ teacher).argmax(dim=1)
        self.train_x, self.train_y = x[:n], y[:n]
        self.test_x, self.test_y = x[n:], y[n:]

    def build_model(self) -> nn.Module:
        return small_resnet(self.width, self.blocks)
