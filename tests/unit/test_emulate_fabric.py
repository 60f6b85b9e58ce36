"""The shared fluid network, driven with a controlled clock (no sleeping, no MPI)."""

import numpy as np
import pytest

import hpcps.emulate.fabric as fabric_mod
from hpcps.emulate.fabric import FlowSpec, SharedFabric


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


def start(fab, templates, iteration=0):
    for t in templates:
        fab.post(t, iteration, "src")
        fab.post(t, iteration, "dst")


def test_max_min_gives_the_leftover_to_the_flow_not_held_back_elsewhere(tmp_path, clock):
    """Two flows into node 2's 1 MB/s NIC; node 1's NIC sends only 0.25 MB/s. Max-min holds the flow
    from node 1 there and gives the flow from node 0 the other 0.75 MB/s (equal shares: 0.5)."""
    fab = SharedFabric(str(tmp_path / "fabric"), [FlowSpec(0, 2, 0, 2, 7_500), FlowSpec(1, 2, 1, 2, 2_500)],
                       np.array([1e6, 0.25e6, 1e6]), np.zeros(3), 1.0, create=True)
    start(fab, (0, 1))
    clock.t += 1.0
    fab._advance(clock.t)
    assert finish_time(fab, 0) == pytest.approx(100.01, abs=1e-9)
    assert finish_time(fab, 1) == pytest.approx(100.01, abs=1e-9)


def test_each_direction_of_a_nic_has_its_own_bandwidth(tmp_path, clock):
    """Node 0 sends to node 1 while node 1 sends to node 0, and node 0 also receives from node 2: every
    flow has a NIC direction of its own at each end and moves at the full 1 MB/s (full duplex)."""
    fab = make(tmp_path, [FlowSpec(0, 1, 0, 1, 10_000), FlowSpec(1, 0, 1, 0, 10_000), FlowSpec(2, 0, 2, 0, 10_000)])
    start(fab, (0, 1))
    clock.t += 1.0
    fab._advance(clock.t)
    assert finish_time(fab, 0) == pytest.approx(100.01, abs=1e-9)
    assert finish_time(fab, 1) == pytest.approx(100.01, abs=1e-9)
    # Node 0 sends and receives at once, from a node that sends nothing else.
    start(fab, (0, 2), iteration=1)
    clock.t += 1.0
    fab._advance(clock.t)
    assert finish_time(fab, 0, 1) == pytest.approx(101.01, abs=1e-9)
    assert finish_time(fab, 2, 1) == pytest.approx(101.01, abs=1e-9)


@pytest.mark.parametrize("lat", [(0.001, 0.005, 0.0), (0.005, 0.001, 0.0)])
def test_a_flow_completes_one_latency_of_the_slower_end_after_its_last_byte(tmp_path, clock, lat):
    """Nodes of unequal latency: a flow either way between them pays the larger of the two."""
    fab = SharedFabric(str(tmp_path / "fabric"), [FlowSpec(0, 1, 0, 1, 10_000), FlowSpec(1, 0, 1, 0, 10_000)],
                       np.full(3, 1e6), np.array(lat), 1.0, create=True)
    start(fab, (0, 1))
    clock.t += 1.0
    fab._advance(clock.t)
    assert finish_time(fab, 0) == pytest.approx(100.01 + 0.005, abs=1e-9)
    assert finish_time(fab, 1) == pytest.approx(100.01 + 0.005, abs=1e-9)
