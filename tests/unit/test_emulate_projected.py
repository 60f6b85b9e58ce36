"""When the fabric expects a message (projected_done), and a server's aggregate charged at its node's
speed alone (NodeClock.run_aggregate), with controlled clocks."""

import math

import numpy as np
import pytest

import hpcps.emulate.node as node_mod
from hpcps.emulate.fabric import FlowSpec, SharedFabric
from hpcps.emulate.node import NodeClock


def test_projected_done_follows_the_flow(tmp_path, clock):
    fab = SharedFabric(str(tmp_path / "fabric"), [FlowSpec(0, 1, 0, 1, 10_000)], np.full(2, 1e6),
                       np.full(2, 0.001), 1.0, create=True)
    assert fab.projected_done(0, 0) == math.inf            # nothing posted
    fab.post(0, 0, "src")
    assert fab.projected_done(0, 0) == math.inf            # one end only: not moving
    clock.t = 100.5
    fab.post(0, 0, "dst")
    assert fab.projected_done(0, 0) == pytest.approx(100.5 + 0.01 + 0.001)
    clock.t = 100.505                                      # half way, same rate
    assert fab.projected_done(0, 0) == pytest.approx(100.511)
    assert fab.projected_done(0, 1) == math.inf and fab.projected_done(0, 2) == math.inf
    clock.t = 101.0
    assert fab.projected_done(0, 0) == pytest.approx(100.511)          # finished: when it arrived
    assert isinstance(fab.projected_done(0, 0), float)
    fab.close()


def test_an_aggregate_is_charged_its_cpu_time_at_the_nodes_speed(monkeypatch):
    clock = NodeClock(dilation=2.0, speed=4.0, fixed_s=1.0, thread_factor=3.0)
    assert clock.aggregate_target(0.02) == pytest.approx(0.01)          # no fixed cost, no thread factor
    cpu = iter([10.0, 10.02])
    monkeypatch.setattr(node_mod.time, "thread_time", lambda: next(cpu))
    monkeypatch.setattr(node_mod, "now", lambda: 50.0)
    held = []
    clock.hold = lambda started, target, *a, **k: held.append((started, target))
    assert clock.run_aggregate(lambda: "summed") == "summed"
    assert held == [(50.0, pytest.approx(0.01))]
