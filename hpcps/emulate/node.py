"""Compute on an emulated node: run the real step here, then sleep until it has taken as long as the
node would take, in dilated time.

What a step costs here comes in two kinds (docs/emulation.md):

- "reference" (the default): each worker times its own step once at start-up, warm, with the machine
  to itself (ranks take turns), and every step is charged that time. Ranks standing for different
  nodes share this machine's caches and memory bandwidth, which real nodes do not: on a 2-core
  machine a step's own CPU time ran 1.7x its time alone, on every node alike, and more after a slow
  node's long sleeps. A reference measured alone is what the simulator's calibration measures too.
- "measured": each step is charged its own thread CPU time (for workloads whose steps differ).

Either way the cost is thread CPU time with one PyTorch thread: unlike wall time, it does not grow
when other ranks merely wait for the cores. The node takes cpu / speed, scaled by what its threads
and its neighbours' threads do to the step (the simulator's calibrated thread model), plus fixed_ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hpcps.emulate.fabric import now

COMPUTE_MODES = ("reference", "measured")
IDLE_POLL_S = 1e-4      # real seconds between idle() calls while a held step has nothing else to do


@dataclass
class NodeClock:
    dilation: float              # real seconds per emulated second
    speed: float                 # the node's speed relative to this machine
    fixed_s: float = 0.0         # the node type's fixed cost per step
    thread_factor: float = 1.0   # step time with the worker's threads and neighbours, over one thread alone
    reference_cpu_s: float | None = None   # the step's CPU time alone here; None: charge each step's own
    lag_s: float = field(default=0.0)      # real time by which steps overran their targets
    overruns: int = field(default=0)
    # Called while a step is held (returns whether it did anything), else the hold sleeps: under ssp and
    # asp the exchange's progress(), so that a rank keeps serving while its worker's step is charged, as
    # a node's other cores would. bsp leaves it unset.
    idle: Callable[[], bool] | None = None

    def step_target(self, cpu_s: float) -> float:
        """Real seconds a step that used cpu_s of CPU here must last."""
        cost = self.reference_cpu_s if self.reference_cpu_s is not None else cpu_s
        return self.dilation * (cost * self.thread_factor / self.speed + self.fixed_s)

    def aggregate_target(self, cpu_s: float) -> float:
        return self.dilation * cpu_s / self.speed

    def hold(self, started: float, target_s: float) -> None:
        """Sleep until started + target_s (a shared-clock time); count an overrun if already past it."""
        remaining = started + target_s - now()
        if remaining > 0 and self.idle is not None:
            while (left := started + target_s - now()) > 0:
                if not self.idle():
                    time.sleep(min(left, IDLE_POLL_S))
        elif remaining > 0:
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


def fastest_cpu_time(fn, min_repeats: int = 15, min_s: float = 0.5, budget_s: float = 3.0) -> float:
    """The least thread CPU time of fn() after one warm-up run, over at least min_repeats runs and
    min_s seconds (short steps repeat more), stopping at budget_s (at least one run): interference
    only ever adds, so the fastest run is the best estimate of what the step costs alone. The
    defaults are the calibration's (benchmarks/calibrate_compute.py), so that the two estimate the
    same thing."""
    fn()
    best, start, runs = float("inf"), time.monotonic(), 0
    while True:
        cpu0 = time.thread_time()
        fn()
        best, runs = min(best, time.thread_time() - cpu0), runs + 1
        elapsed = time.monotonic() - start
        if elapsed > budget_s or (runs >= min_repeats and elapsed >= min_s) or runs >= 200:
            return best
