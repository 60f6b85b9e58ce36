"""The emulated node's compute charge: a step's reference time alone, or its own CPU time."""

import time

import pytest

from hpcps.emulate.node import NodeClock, fastest_cpu_time


def test_a_step_is_charged_its_reference_time_when_there_is_one():
    clock = NodeClock(dilation=4.0, speed=0.5, fixed_s=0.001, thread_factor=1.5, reference_cpu_s=0.010)
    # 4 * (0.010 * 1.5 / 0.5 + 0.001), whatever the step itself used
    assert clock.step_target(0.003) == pytest.approx(0.124)
    assert clock.step_target(0.050) == pytest.approx(0.124)


def test_without_a_reference_a_step_is_charged_its_own_cpu_time():
    clock = NodeClock(dilation=4.0, speed=0.5, fixed_s=0.001, thread_factor=1.5)
    assert clock.step_target(0.010) == pytest.approx(0.124)
    assert clock.step_target(0.020) == pytest.approx(4.0 * (0.020 * 3.0 + 0.001))


def spin(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_fastest_cpu_time_keeps_the_least_of_the_timed_runs_and_skips_the_warm_up():
    costs = iter([0.05, 0.004, 0.002, 0.006] + [0.003] * 50)
    best = fastest_cpu_time(lambda: spin(next(costs)), min_repeats=3, min_s=0.0)
    assert 0.002 <= best < 0.0028          # the warm-up's 0.05 s is not counted, the least run is


def test_fastest_cpu_time_counts_cpu_not_sleep():
    def step():
        spin(0.002)
        time.sleep(0.01)
    assert fastest_cpu_time(step, min_repeats=3, min_s=0.0) < 0.006


def test_fastest_cpu_time_stops_at_its_budget():
    calls = []

    def slow():
        calls.append(1)
        spin(0.03)
    t0 = time.monotonic()
    fastest_cpu_time(slow, min_repeats=100, min_s=10.0, budget_s=0.1)
    assert len(calls) < 10 and time.monotonic() - t0 < 2.0


def test_a_held_step_calls_idle_until_its_time_is_up():
    from hpcps.emulate.fabric import now
    from hpcps.emulate.node import NodeClock
    calls = []
    clock = NodeClock(dilation=1.0, speed=1.0, idle=lambda: calls.append(now()) or False)
    started = now()
    clock.hold(started, 0.02)
    assert now() >= started + 0.02 and len(calls) >= 2 and clock.overruns == 0


def test_an_overlapped_step_pushes_each_piece_at_its_share_of_the_emulated_step():
    """The real step (10 ms of CPU) completes piece 1 halfway through and piece 0 at its end; charged
    200 ms, it pushes piece 1 at 100 ms and piece 0 at 200 ms, polling the exchange meanwhile."""
    from hpcps.emulate.fabric import now
    from hpcps.emulate.node import PushSchedule
    clock = NodeClock(dilation=1.0, speed=1.0, reference_cpu_s=0.2)
    pushed, polls = [], []
    schedule = PushSchedule(lambda q: pushed.append((q, now())), lambda: polls.append(now()))

    def step():
        spin(0.005)
        schedule.ready(1)
        spin(0.005)
        schedule.ready(0)
    t0 = now()
    clock.run_step(step, pushes=schedule)
    end = now()
    assert [q for q, _ in pushed] == [1, 0]
    assert pushed[0][1] - t0 == pytest.approx(0.1, abs=0.03)
    assert pushed[1][1] - t0 == pytest.approx(0.2, abs=0.03)
    assert end - t0 >= 0.2 and clock.overruns == 0 and (clock.pushes, clock.late_pushes) == (2, 0)
    assert len(polls) > 20              # the exchange kept going while the step was held


def test_an_overlapped_step_that_overruns_pushes_at_once_and_counts_once():
    from hpcps.emulate.node import PushSchedule
    clock = NodeClock(dilation=1.0, speed=1.0, reference_cpu_s=0.001)
    pushed = []
    schedule = PushSchedule(pushed.append, lambda: None)

    def step():
        schedule.ready(3)
        spin(0.02)
        schedule.ready(2)
    clock.run_step(step, pushes=schedule)
    assert pushed == [3, 2] and clock.overruns == 1 and clock.lag_s > 0.015
    assert clock.pushes == 2 and clock.late_pushes == 2
