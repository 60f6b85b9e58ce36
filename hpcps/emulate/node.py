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

An overlapped step (PushSchedule) pushes each piece at its share of the emulated step: the real step
runs first and records, in thread CPU time, when the backward pass completed each piece; the hold
that follows sleeps until start + target x that share, pushes the piece, and so on to the step's end,
keeping the exchange going (progress) while it sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hpcps.emulate.fabric import now

COMPUTE_MODES = ("reference", "measured")
# How long a hold that keeps the exchange going sleeps between polls (real seconds): a message that
# completes meanwhile is seen that much late, a fraction of one on the fabric once dilated.
HOLD_POLL_S = 5e-4


class PushSchedule:
    """The pieces an emulated step's backward pass made ready, and when: Worker.attach's on_ready
    records (ready), NodeClock.run_step pushes them at their share of the emulated step (push) and
    keeps the exchange going while it waits (poll)."""

    def __init__(self, push, poll):
        self.push, self.poll = push, poll
        self.marks: list[tuple[int, float]] = []      # (piece, thread CPU time when it was complete)

    def ready(self, piece: int) -> None:
        self.marks.append((piece, time.thread_time()))

    def fractions(self, cpu0: float, cpu_s: float) -> list[tuple[int, float]]:
        """(piece, share of the step after which it was complete), in the order they became ready."""
        return [(q, min(1.0, max(0.0, (t - cpu0) / cpu_s)) if cpu_s > 0 else 1.0) for q, t in self.marks]


@dataclass
class NodeClock:
    dilation: float              # real seconds per emulated second
    speed: float                 # the node's speed relative to this machine
    fixed_s: float = 0.0         # the node type's fixed cost per step
    thread_factor: float = 1.0   # step time with the worker's threads and neighbours, over one thread alone
    reference_cpu_s: float | None = None   # the step's CPU time alone here; None: charge each step's own
    lag_s: float = field(default=0.0)      # real time by which steps overran their targets
    overruns: int = field(default=0)
    pushes: int = field(default=0)         # pieces an overlapped step pushed
    late_pushes: int = field(default=0)    # of them, pushed past their time: the real step was not through
    # Called while a step is held when no poll is given (returns whether it did anything): under ssp
    # and asp the exchange's progress(), so that a rank keeps serving while its worker's step is
    # charged, as a node's other cores would. bsp leaves it unset.
    idle: Callable[[], bool] | None = None

    def step_target(self, cpu_s: float) -> float:
        """Real seconds a step that used cpu_s of CPU here must last."""
        cost = self.reference_cpu_s if self.reference_cpu_s is not None else cpu_s
        return self.dilation * (cost * self.thread_factor / self.speed + self.fixed_s)

    def aggregate_target(self, cpu_s: float) -> float:
        return self.dilation * cpu_s / self.speed

    def hold(self, started: float, target_s: float, poll=None, count: bool = True) -> None:
        """Sleep until started + target_s (a shared-clock time), calling poll() (else idle(), if set)
        every HOLD_POLL_S; count an overrun if already past it (unless count is False). Always
        sleeping between polls: ranks that outnumber the cores must not spin."""
        poll = poll if poll is not None else self.idle
        until = started + target_s
        remaining = until - now()
        if remaining <= 0:
            if count:
                self.overruns += 1
                self.lag_s -= remaining
            return
        if poll is None:
            time.sleep(remaining)
            return
        while remaining > 0:
            poll()
            remaining = until - now()
            if remaining > 0:
                time.sleep(min(remaining, HOLD_POLL_S))
                remaining = until - now()

    def run_step(self, fn, target=None, pushes: PushSchedule | None = None):
        """Run fn() as a training step on this node; returns its result. With pushes, push each piece
        the step made ready at its share of the emulated step."""
        if pushes is not None:
            pushes.marks.clear()
        started, cpu0 = now(), time.thread_time()
        out = fn()
        cpu = time.thread_time() - cpu0
        target_s = (target or self.step_target)(cpu)
        if pushes is None:
            self.hold(started, target_s)
            return out
        through = now()
        late = through - (started + target_s)
        if late >= 0:                  # the real step alone overran: pieces go at once
            self.overruns += 1
            self.lag_s += late
        for piece, share in pushes.fractions(cpu0, cpu):
            self.pushes += 1
            # Late when the real step was not through by the piece's time on its node. A piece due
            # right after another goes a poll later than due (a sleep's overshoot, as any hold has):
            # that is not the step's lateness and is not counted.
            if through > started + target_s * share:
                self.late_pushes += 1
            self.hold(started, target_s * share, pushes.poll, count=False)
            pushes.push(piece)
        self.hold(started, target_s, pushes.poll, count=False)
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
