"""The shared fluid network, driven with a controlled clock (no sleeping, no MPI)."""

import numpy as np
import pytest

import hpcps.emulate.fabric as fabric_mod
from hpcps.emulate.fabric import FlowSpec, SharedFabric


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(fabric_mod, "now", c)
    return c


def make(tmp_path, templates, n_nodes=3, bw=1e6, lat=0.0, dilation=1.0):
    return SharedFabric(str(tmp_path / "fabric"), templates, np.full(n_nodes, bw), np.full(n_nodes, lat),
                        dilation, create=True)


def finish_time(fab, template, iteration=0):
    return fab.slots[2 * template + iteration % 2, fabric_mod._DONE]


def test_one_flow_takes_bytes_over_bandwidth_plus_latency(tmp_path, clock):
    fab = make(tmp_path, [FlowSpec(0, 1, 0, 1, 10_000)], lat=0.001)
    fab.post(0, 0, "src")
    clock.t += 0.5                       # the receiver posts later: the flow starts then (rendezvous)
    fab.post(0, 0, "dst")
    clock.t += 1.0
    fab._advance(clock.t)
    assert finish_time(fab, 0) == pytest.approx(100.5 + 0.01 + 0.001)


def test_two_flows_into_one_nic_each_get_half(tmp_path, clock):
    fab = make(tmp_path, [FlowSpec(1, 0, 1, 0, 10_000), FlowSpec(2, 0, 2, 0, 10_000)])
    for t in (0, 1):
        fab.post(t, 0, "src")
        fab.post(t, 0, "dst")
    clock.t += 1.0
    fab._advance(clock.t)
    assert finish_time(fab, 0) == pytest.approx(100.02)
    assert finish_time(fab, 1) == pytest.approx(100.02)


def test_a_flow_speeds_up_when_its_competitor_ends(tmp_path, clock):
    fab = make(tmp_path, [FlowSpec(1, 0, 1, 0, 5_000), FlowSpec(2, 0, 2, 0, 10_000)])
    for t in (0, 1):
        fab.post(t, 0, "src")
        fab.post(t, 0, "dst")
    clock.t += 1.0
    fab._advance(clock.t)
    # both at 0.5 MB/s until the short one ends at 10 ms; the long one then has 5 kB left at 1 MB/s
    assert finish_time(fab, 0) == pytest.approx(100.01)
    assert finish_time(fab, 1) == pytest.approx(100.015)


def test_dilation_stretches_real_time(tmp_path, clock):
    fab = make(tmp_path, [FlowSpec(0, 1, 0, 1, 10_000)], lat=0.001, dilation=4.0)
    fab.post(0, 0, "src")
    fab.post(0, 0, "dst")
    clock.t += 1.0
    fab._advance(clock.t)
    assert finish_time(fab, 0) == pytest.approx(100 + 4 * 0.011)


def test_iterations_use_alternate_slots(tmp_path, clock):
    fab = make(tmp_path, [FlowSpec(0, 1, 0, 1, 1_000)])
    fab.post(0, 0, "src")
    fab.post(0, 0, "dst")
    clock.t += 1.0
    fab.post(0, 1, "src")                # the sender is already on the next iteration
    fab.wait(0, 0)                       # the receiver still gets iteration 0's completion
    assert fab.slots[1, fabric_mod._ITER] == 1
