"""A worker: the model on its device bound to flat buffers, its data, and one training step, with
hooks that tell the exchange when a piece's gradient is complete and which pieces a layer needs.

- After backward has accumulated a parameter's gradient (a post-accumulate-grad hook), every piece of
  the plan whose parameters are all done is ready to push: on_ready(piece) is called at once, while
  the backward pass goes on with earlier layers.
- Before a module's forward runs (a forward pre-hook), need(pieces) is called with the pieces holding
  that module's own parameters, so the forward starts on what has arrived and waits only for what a
  layer is about to read. A workload that reads a module's parameters outside that module's forward
  must run with [exchange] overlap = false (docs/runtime.md).

The runtime, not the workload, moves each batch to the worker's device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hpcps.ps.flat import FlatModel
from hpcps.ps.plan import MessagePlan


def move_to_device(batch: Any, device: torch.device | str) -> Any:
    """A batch (tensors, or tuples, lists and dicts of them) on device; other values as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    return batch


def param_ranges(sizes: list[int]) -> list[tuple[int, int]]:
    out, offset = [], 0
    for n in sizes:
        out.append((offset, offset + n))
        offset += n
    return out


def pieces_overlapping(plan: MessagePlan, start: int, stop: int) -> list[int]:
    return [p.index for p in plan.pieces if p.start < stop and start < p.stop]


class Worker:
    def __init__(self, workload, device: str | torch.device, plan: MessagePlan | None = None):
        self.workload = workload
        self.device = torch.device(device)
        self.flat = FlatModel(workload.build_model(), self.device)
        self.model = self.flat.model
        self.plan = plan
        self.on_ready: Callable[[int], None] | None = None
        self.need: Callable[[list[int]], None] | None = None
        self._hooks: list = []
        self._params_left = np.zeros(0, dtype=np.int64)
        self._piece_params: np.ndarray = np.zeros(0, dtype=np.int64)

    # -- overlap hooks ----------------------------------------------------------------------------------
    def attach(self, plan: MessagePlan, on_ready: Callable[[int], None], need: Callable[[list[int]], None]) -> None:
        """Call on_ready(piece) as pieces' gradients complete and need(pieces) before each layer's forward."""
        self.plan, self.on_ready, self.need = plan, on_ready, need
        params = [p for p in self.model.parameters() if p.requires_grad]
        ranges = param_ranges(self.flat.sizes)
        by_param = [pieces_overlapping(plan, a, b) for a, b in ranges]
        hook_order = [sorted(pieces, reverse=True) for pieces in by_param]   # backward order
        self._piece_params = np.zeros(len(plan.pieces), dtype=np.int64)
        for pieces in by_param:
            self._piece_params[pieces] += 1
        self._params_left = self._piece_params.copy()
        for p, pieces in zip(params, hook_order):
            self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_done(pieces)))
        index = {id(p): i for i, p in enumerate(params)}
        for module in self.model.modules():
            own = [index[id(p)] for p in module.parameters(recurse=False) if id(p) in index]
            if own:
                needed = sorted({q for i in own for q in by_param[i]})
                self._hooks.append(module.register_forward_pre_hook(self._before_forward(needed)))

    def _grad_done(self, pieces: list[int]):
        def hook(_param):
            for q in pieces:
                self._params_left[q] -= 1
                if self._params_left[q] == 0 and self.on_ready is not None:
                    self.on_ready(q)
        return hook

    def _before_forward(self, pieces: list[int]):
        def hook(_module, _inputs):
            if self.need is not None:
                self.need(pieces)
        return hook

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.on_ready = self.need = None

    # -- the step ---------------------------------------------------------------------------------------
    def load(self, indices) -> Any:
        return move_to_device(self.workload.get_batch(indices), self.device)

    def step(self, batch) -> tuple[torch.Tensor, float]:
        """Zero the gradients, forward and backward on batch. With hooks attached, every piece is
        reported ready by the end, including pieces of parameters the step did not use."""
        self.flat.zero_grad()
        self._params_left[:] = self._piece_params
        loss, correct = self.workload.loss(self.model, batch)
        loss.backward()
        if self.on_ready is not None:
            for q in np.flatnonzero(self._params_left > 0):
                self._params_left[q] = 0
                self.on_ready(int(q))
        return loss, correct

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            hooks, self.need = self.need, None      # evaluation reads parameters already in place
            try:
                return self.workload.evaluate(self.model)
            finally:
                self.need = hooks
