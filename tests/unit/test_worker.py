"""The worker: batches go to the worker's device, pieces are reported ready as backward produces them,
and each layer asks for its own pieces before it runs."""

import numpy as np
import pytest
import torch
from torch import nn

from hpcps.ps.plan import MessagePlan
from hpcps.ps.worker import Worker, move_to_device
from hpcps.workloads.base import Workload, device_of


class TinyWorkload(Workload):
    """Three linear layers on random data; get_batch gives CPU tensors, as every workload does."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.train_x, self.train_y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
        self.test_x, self.test_y = self.train_x[:8], self.train_y[:8]

    def build_model(self):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y), 0.0    # no .item(): meta tensors hold no values


FIRST_LAYER = 8 * 64 + 64          # elements of the first Linear's weight and bias


def test_batches_are_moved_to_the_workers_device():
    """On the meta device nothing computes, but a batch left on the CPU fails the forward pass: the
    same failure a GPU worker had when the runtime forgot to move batches."""
    worker = Worker(TinyWorkload(), "meta")
    batch = worker.load(np.arange(4))
    assert all(t.device.type == "meta" for t in batch)
    worker.step(batch)                                             # forward and backward on the device
    with pytest.raises((RuntimeError, NotImplementedError)):      # what a forgotten move looks like
        worker.step(worker.workload.get_batch(np.arange(4)))


def test_move_to_device_keeps_structure():
    out = move_to_device({"x": (torch.zeros(1), [torch.ones(1)]), "n": 3}, "meta")
    assert out["x"][0].device.type == "meta" and out["x"][1][0].device.type == "meta" and out["n"] == 3


def test_evaluation_runs_where_the_model_is():
    seen = []

    class Seen(Exception):
        pass

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1, device="meta"))

        def forward(self, x):
            seen.append(x.device.type)
            raise Seen

    assert device_of(Recording()).type == "meta"
    with pytest.raises(Seen):
        TinyWorkload().evaluate(Recording())
    assert seen == ["meta"]


def test_pieces_are_ready_in_backward_order_and_needed_in_forward_order():
    workload = TinyWorkload()
    worker = Worker(workload, "cpu")
    plan = MessagePlan.build(worker.flat.numel, servers=[0, 1], workers=[0], bucket_bytes=4 * 1024)
    assert len(plan.pieces) >= 4
    events = []
    worker.attach(plan, lambda q: events.append(("ready", q, worker.flat.grads.clone())),
                  lambda qs: events.append(("need", tuple(qs), None)))
    loss, _ = worker.step(worker.load(np.arange(16)))
    needs = [e[1] for e in events if e[0] == "need"]
    readies = [e[1] for e in events if e[0] == "ready"]
    # every piece needed before the layer that reads it, from the first piece on
    assert needs[0][0] == 0 and [q for qs in needs for q in qs] == sorted(q for qs in needs for q in qs)
    # every piece reported ready exactly once, the last piece first
    assert sorted(readies) == list(range(len(plan.pieces))) and readies[0] == len(plan.pieces) - 1
    assert readies != sorted(readies)
    # when a piece was reported ready, its gradient was already final
    final = worker.flat.grads
    for kind, q, snapshot in events:
        if kind == "ready":
            p = plan.pieces[q]
            assert torch.equal(snapshot[p.start:p.stop], final[p.start:p.stop]), q
    # the first ready piece was reported while other gradients were still zero: before backward ended
    first = next(e for e in events if e[0] == "ready")
    assert (first[2][:FIRST_LAYER] == 0).all() and (final[:FIRST_LAYER] != 0).any()
    worker.detach()
    events.clear()
    worker.step(worker.load(np.arange(16)))
    assert events == []
