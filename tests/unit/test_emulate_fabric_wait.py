"""SharedFabric.wait with a controlled clock: it sleeps until the message of its own iteration has
arrived (both ends posted, bytes moved, latency passed), polling while the other end has not posted."""

import numpy as np
import pytest

import hpcps.emulate.fabric as fabric_mod
from hpcps.emulate.fabric import FlowSpec, SharedFabric


class Clock:
    """now() and time.sleep() of the fabric: sleeping moves the clock; at set times, things happen."""

    def __init__(self):
        self.t, self.sleeps, self.at = 100.0, [], []

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        if len(self.sleeps) > 10_000:
            raise RuntimeError("wait() never returned")
        self.t += s
        while self.at and self.at[0][0] <= self.t:
            self.at.pop(0)[1]()


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(fabric_mod, "now", c)
    monkeypatch.setattr(fabric_mod.time, "sleep", c.sleep)
    return c


def make(tmp_path):
    # two templates into node 0: 10 kB each at 1 MB/s, 1 ms latency
    return SharedFabric(str(tmp_path / "fabric"), [FlowSpec(1, 0, 1, 0, 10_000), FlowSpec(2, 0, 2, 0, 10_000)],
                        np.full(3, 1e6), np.full(3, 0.001), 1.0, create=True)


def test_wait_returns_when_the_message_has_arrived(tmp_path, clock):
    fab = make(tmp_path)
    fab.post(1, 1, "src")
    fab.post(1, 1, "dst")
    fab.wait(1, 1)
    assert clock.t == pytest.approx(100.011, abs=2e-4) and clock.t >= 100.011 - 1e-12
    assert fab.arrived(1, 1) and not fab.arrived(0, 1) and not fab.arrived(1, 0)
    fab.close()


def test_wait_polls_until_the_other_end_posts(tmp_path, clock):
    fab = make(tmp_path)
    fab.post(0, 0, "dst")
    clock.at.append((100.05, lambda: fab.post(0, 0, "src")))
    fab.wait(0, 0)
    assert clock.sleeps[0] == pytest.approx(0.002)    # the default poll while the sender has not posted
    assert clock.t == pytest.approx(100.061, abs=2.5e-3) and clock.t >= 100.05 + 0.011 - 1e-9
    clock.sleeps.clear()
    fab.post(1, 0, "dst")
    clock.at.append((clock.t + 0.01, lambda: fab.post(1, 0, "src")))
    fab.wait(1, 0, poll_s=0.004)
    assert clock.sleeps[0] == pytest.approx(0.004)
    fab.close()


def test_a_finished_message_of_an_earlier_iteration_is_not_this_ones(tmp_path, clock):
    fab = make(tmp_path)
    fab.post(0, 0, "src")
    fab.post(0, 0, "dst")
    fab.wait(0, 0)
    start = clock.t
    clock.t += 1.0                                  # iteration 0's message long arrived (same slot as 2)
    fab.post(0, 2, "dst")
    clock.at.append((clock.t + 0.1, lambda: fab.post(0, 2, "src")))
    fab.wait(0, 2)
    assert clock.t >= start + 1.0 + 0.1 + 0.011 - 1e-9
    fab.close()


def test_a_message_has_arrived_at_its_due_time_exactly(tmp_path, clock):
    fab = make(tmp_path)
    fab.post(0, 3, "src")
    fab.post(0, 3, "dst")
    clock.t += 1.0
    assert fab.arrived(0, 3)
    due = float(fab.slots[2 * 0 + 1, fabric_mod._DONE])
    clock.t = due
    assert fab.arrived(0, 3)
    clock.t = np.nextafter(due, 0.0)
    assert not fab.arrived(0, 3) and fab.projected_done(0, 3) == due
    fab.close()


def exact(tmp_path, lat=0.25, nbytes=1024, bw=8192.0):
    """One template: nbytes at bw bytes/s (1/8 s by default), then lat."""
    return SharedFabric(str(tmp_path / "fabric"), [FlowSpec(0, 1, 0, 1, nbytes)], np.full(2, bw),
                        np.full(2, lat), 1.0, create=True)


def test_wait_sleeps_to_the_projected_arrival(tmp_path, clock):
    fab = exact(tmp_path)
    fab.post(0, 0, "src")
    fab.post(0, 0, "dst")
    fab.wait(0, 0, poll_s=1.0)
    assert clock.sleeps == [0.375] and clock.t == 100.375
    fab.close()


def test_wait_sleeps_through_the_latency_after_the_last_byte(tmp_path, clock):
    fab = exact(tmp_path)
    fab.post(0, 0, "src")
    fab.post(0, 0, "dst")
    clock.t = 100.25                                 # bytes through at 100.125, due at 100.375
    fab.wait(0, 0, poll_s=1.0)
    assert clock.sleeps == [0.125] and clock.t == 100.375
    clock.sleeps.clear()
    fab.wait(0, 0)                                   # due exactly now: no sleep
    assert clock.sleeps == []
    fab.close()


def test_wait_on_a_slow_nic_sleeps_no_longer_than_needed(tmp_path, clock):
    fab = exact(tmp_path, lat=0.0, nbytes=1, bw=0.25)                  # 4 s
    fab.post(0, 0, "src")
    fab.post(0, 0, "dst")
    clock.t = 100.5
    assert fab.projected_done(0, 0) == 104.0
    fab.wait(0, 0, poll_s=1.0)
    assert clock.sleeps == [1.0, 1.0, 1.0, 0.5] and clock.t == 104.0
    fab.close()


def test_waiting_on_a_slot_an_earlier_iteration_finished_polls_at_the_poll_interval(tmp_path, clock):
    fab = exact(tmp_path, lat=0.001)
    fab.post(0, 0, "src")
    fab.post(0, 0, "dst")
    clock.t = 101.0
    assert fab.arrived(0, 0)
    clock.at.append((101.5, lambda: (fab.post(0, 2, "dst"), fab.post(0, 2, "src"))))
    fab.wait(0, 2, poll_s=0.25)                      # nobody has posted iteration 2 yet
    assert clock.sleeps[:2] == [0.25, 0.25]
    fab.close()


def test_a_second_post_of_one_end_does_not_restart_a_moving_message(tmp_path, clock):
    fab = exact(tmp_path, lat=0.0)
    fab.post(0, 0, "src")
    fab.post(0, 0, "dst")
    clock.t = 100.0625
    fab.post(0, 0, "dst")
    assert fab.projected_done(0, 0) == 100.125
    fab.close()
