"""NodeClock.run_step and PushSchedule.fractions with controlled clocks: what a step is charged, when
each piece goes, and what counts as an overrun or a late push (at the boundaries too)."""

import pytest

import hpcps.emulate.node as node_mod
from hpcps.emulate.node import NodeClock, PushSchedule


class Clocks:
    def __init__(self, monkeypatch, walls, cpus):
        self.walls, self.cpus = iter(walls), iter(cpus)
        monkeypatch.setattr(node_mod, "now", lambda: next(self.walls))
        monkeypatch.setattr(node_mod.time, "thread_time", lambda: next(self.cpus))


def holding(clock):
    held = []
    clock.hold = lambda started, target, poll=None, count=True: held.append((started, target, poll, bool(count)))
    return held


def test_a_step_is_held_to_its_target_from_its_start(monkeypatch):
    Clocks(monkeypatch, [50.0], [10.0, 10.004])
    clock = NodeClock(dilation=2.0, speed=0.5, fixed_s=0.001)
    held = holding(clock)
    assert clock.run_step(lambda: "out") == "out"
    assert held == [(50.0, pytest.approx(2.0 * (0.004 / 0.5 + 0.001)), None, True)]


def overlapped(monkeypatch, through, marks, reference=0.25):
    """A step started at 100.0 (wall) and 8.0 (CPU) whose pieces became ready at CPU times marks,
    through at wall time through, charged reference."""
    Clocks(monkeypatch, [100.0, through], [8.0, *marks, marks[-1]])
    clock = NodeClock(dilation=1.0, speed=1.0, reference_cpu_s=reference)
    pushed = []
    poll = object()
    schedule = PushSchedule(pushed.append, poll)
    return clock, schedule, pushed, poll


def test_pieces_go_at_their_share_of_the_emulated_step(monkeypatch):
    clock, schedule, pushed, poll = overlapped(monkeypatch, 100.0625, [8.0078125, 8.015625])    # halfway, at the end
    held = holding(clock)

    def step():
        schedule.ready(1)
        schedule.ready(0)
    clock.run_step(step, pushes=schedule)
    assert pushed == [1, 0]
    assert held == [(100.0, 0.125, poll, False), (100.0, 0.25, poll, False), (100.0, 0.25, poll, False)]
    assert (clock.pushes, clock.late_pushes, clock.overruns, clock.lag_s) == (2, 0, 0, 0.0)


def test_a_piece_due_exactly_when_the_step_was_through_is_not_late(monkeypatch):
    clock, schedule, pushed, _ = overlapped(monkeypatch, 100.125, [8.0078125, 8.015625])
    holding(clock)

    def step():
        schedule.ready(1)
        schedule.ready(0)
    clock.run_step(step, pushes=schedule)
    assert (clock.pushes, clock.late_pushes, clock.overruns) == (2, 0, 0)


def test_a_step_through_exactly_at_its_target_counts_as_an_overrun(monkeypatch):
    clock, schedule, pushed, _ = overlapped(monkeypatch, 100.25, [8.015625])
    holding(clock)
    clock.run_step(lambda: schedule.ready(4), pushes=schedule)
    assert (clock.overruns, clock.lag_s, clock.late_pushes, pushed) == (1, 0.0, 0, [4])


def test_overruns_and_lag_add_up_over_steps(monkeypatch):
    clock = NodeClock(dilation=1.0, speed=1.0, reference_cpu_s=0.25)
    holding(clock)
    for _ in range(2):
        Clocks(monkeypatch, [100.0, 100.5], [10.0, 10.01, 10.01])
        schedule = PushSchedule(lambda q: None, None)
        clock.run_step(lambda s=schedule: s.ready(0), pushes=schedule)
    assert clock.overruns == 2 and clock.lag_s == pytest.approx(0.5)
    assert clock.pushes == 2 and clock.late_pushes == 2


def test_each_step_pushes_only_its_own_pieces(monkeypatch):
    clock = NodeClock(dilation=1.0, speed=1.0, reference_cpu_s=0.25)
    holding(clock)
    pushed = []
    schedule = PushSchedule(pushed.append, None)
    for q in (7, 8):
        Clocks(monkeypatch, [100.0, 100.01], [10.0, 10.01, 10.01])
        clock.run_step(lambda q=q: schedule.ready(q), pushes=schedule)
    assert pushed == [7, 8] and clock.pushes == 2


def test_fractions_are_clipped_to_the_step_and_a_step_without_cpu_time_is_all_at_the_end(monkeypatch):
    schedule = PushSchedule(None, None)
    schedule.marks[:] = [(0, 9.0), (1, 10.5), (2, 12.0)]
    assert schedule.fractions(10.0, 1.0) == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert schedule.fractions(10.0, 0.0) == [(0, 1.0), (1, 1.0), (2, 1.0)]


class FakeTime:
    """now() and time.sleep() of the node: sleeping moves the clock."""

    def __init__(self, monkeypatch, t):
        self.t, self.sleeps = t, []
        monkeypatch.setattr(node_mod, "now", lambda: self.t)
        monkeypatch.setattr(node_mod.time, "sleep", self.sleep)

    def sleep(self, s):
        self.sleeps.append(s)
        assert len(self.sleeps) < 1000, "hold() never returned"
        self.t += s


def test_a_hold_past_its_time_counts_an_overrun_and_the_lag(monkeypatch):
    ft = FakeTime(monkeypatch, 100.5)
    clock = NodeClock(dilation=1.0, speed=1.0)
    clock.hold(100.0, 0.25)
    clock.hold(100.0, 0.375)
    assert clock.overruns == 2 and clock.lag_s == 0.25 + 0.125 and ft.sleeps == []
    clock.hold(100.0, 0.25, count=False)
    assert clock.overruns == 2 and clock.lag_s == 0.375
    ft.t = 100.25                              # exactly at its time: no sleep, an overrun of nothing
    clock.hold(100.0, 0.25)
    assert clock.overruns == 3 and clock.lag_s == 0.375 and ft.sleeps == []


def test_a_hold_without_a_poll_sleeps_the_rest_at_once(monkeypatch):
    ft = FakeTime(monkeypatch, 100.0)
    clock = NodeClock(dilation=1.0, speed=1.0)
    clock.hold(100.0, 0.25)
    assert ft.sleeps == [0.25] and clock.overruns == 0 and clock.lag_s == 0.0


def test_a_hold_with_a_poll_sleeps_in_short_steps_between_polls(monkeypatch):
    monkeypatch.setattr(node_mod, "HOLD_POLL_S", 2.0 ** -10)
    ft = FakeTime(monkeypatch, 0.0)
    polls = []

    def poll():
        polls.append(ft.t)
        assert len(polls) < 1000, "hold() never returned"
    clock = NodeClock(dilation=1.0, speed=1.0)
    clock.hold(0.0, 2.0 ** -8, poll)
    assert ft.sleeps == [2.0 ** -10] * 4 and polls == [i * 2.0 ** -10 for i in range(4)] and ft.t == 2.0 ** -8
    assert clock.overruns == 0
    ft.sleeps.clear()
    clock.hold(0.0, 2.0 ** -8 + 2.0 ** -12, poll)          # the last sleep is what is left
    assert ft.sleeps == [2.0 ** -12]


class StepClocks:
    """time.monotonic and time.thread_time of the node, each step of fn taking wall and cpu seconds."""

    def __init__(self, monkeypatch, wall, cpu):
        self.wall, self.cpu, self.calls, self.m, self.c = wall, cpu, 0, 0.0, 0.0
        monkeypatch.setattr(node_mod.time, "monotonic", lambda: self.m)
        monkeypatch.setattr(node_mod.time, "thread_time", lambda: self.c)

    def fn(self):
        self.calls += 1
        self.m += self.wall
        self.c += self.cpu(self.calls) if callable(self.cpu) else self.cpu


@pytest.mark.parametrize("wall, runs", [
    (0.125, 15),          # min_repeats runs, past min_s by then
    (0.015625, 32),       # min_repeats runs are not min_s seconds: on to 0.5 s
    (0.75, 5),            # past the 3 s budget after the 5th
    (0.0, 200),           # at most 200
])
def test_fastest_cpu_time_runs_as_its_defaults_say(monkeypatch, wall, runs):
    sc = StepClocks(monkeypatch, wall, 0.25)
    assert node_mod.fastest_cpu_time(sc.fn) == 0.25
    assert sc.calls == 1 + runs                     # and a warm-up


def test_fastest_cpu_time_is_the_least_run_after_the_warm_up(monkeypatch):
    costs = {1: 0.0625, 2: 0.5, 3: 0.125, 4: 0.25}
    sc = StepClocks(monkeypatch, 1.0, lambda n: costs.get(n, 0.375))
    assert node_mod.fastest_cpu_time(sc.fn, min_repeats=3, min_s=0.0, budget_s=100.0) == 0.125
    assert sc.calls == 4


def test_a_poll_that_reaches_the_time_ends_the_hold_without_another_sleep(monkeypatch):
    monkeypatch.setattr(node_mod, "HOLD_POLL_S", 2.0 ** -9)
    ft = FakeTime(monkeypatch, 0.0)

    def poll():                                   # each poll takes 2^-10 s
        ft.t += 2.0 ** -10
    NodeClock(dilation=1.0, speed=1.0).hold(0.0, 2.0 ** -8, poll)
    assert ft.sleeps == [2.0 ** -9] and ft.t == 2.0 ** -8
