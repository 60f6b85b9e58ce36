"""Compute on an emulated node: run the real step here, then sleep until it has taken as long as the
node would take, in dilated time.

A step's cost here is its thread CPU time with one PyTorch thread: unlike wall time, it does not grow
when other ranks share this machine's cores. The node takes cpu / speed, scaled by what its threads
and its neighbours' threads do to the step (the simulator's calibrated thread model), plus fixed_ms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hpcps.emulate.fabric import now


@dataclass
class NodeClock:
    dilation: float              # real seconds per emulated second
    speed: float                 # the node's speed relative to this machine
    fixed_s: float = 0.0         # the node type's fixed cost per step
    thread_factor: float = 1.0   # step time with the worker's threads and neighbours, over one thread alone
    lag_s: float = field(default=0.0)      # real time by which steps overran their targets
    overruns: int = field(default=0)

    def step_target(self, cpu_s: float) -> float:
        """Real seconds the step must last."""
        return self.dilation * (cpu_s * self.thread_factor / self.speed + self.fixed_s)

    def aggregate_target(self, cpu_s: float) -> float:
        return self.dilation * cpu_s / self.speed

    def hold(self, started: float, target_s: float) -> None:
        """Sleep until started + target_s (a shared-clock time); count an overrun if already past it."""
        remaining = started + target_s - now()
        if remaining > 0:
            time.sleep(remaining)
        else:
            self.overruns += 1
            self.lag_s -= remaining

    def run_step(self, fn, target=None):
        """Run fn() as a training step on this node; returns its result."""
        started, cpu0 = now(), time.thread_time()
        out = fn()
        self.hold(started, (target or self.step_target)(time.thread_time() - cpu0))
        return out

    def run_aggregate(self, fn):
        return self.run_step(fn, self.aggregate_target)
