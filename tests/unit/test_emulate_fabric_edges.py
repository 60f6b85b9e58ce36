"""The shared fabric's edge cases, with a controlled clock: a flow ending exactly now, a message of no
bytes, a NIC slower than a byte a second, each template's own latency, and a rank opening the table
another rank made without wiping it."""

import numpy as np

from hpcps.emulate.fabric import FlowSpec, SharedFabric


def make(tmp_path, templates, bw, lat, n_nodes=3):
    return SharedFabric(str(tmp_path / "fabric"), templates, np.full(n_nodes, bw, dtype=float),
                        np.asarray(lat, dtype=float) if np.ndim(lat) else np.full(n_nodes, lat, dtype=float),
                        1.0, create=True)


def both(fab, template, iteration=0):
    fab.post(template, iteration, "src")
    fab.post(template, iteration, "dst")


def test_a_flow_whose_last_byte_moves_exactly_now_has_arrived(tmp_path, clock):
    fab = make(tmp_path, [FlowSpec(0, 1, 0, 1, 1024)], 8192.0, 0.0)        # 1/8 s
    both(fab, 0)
    clock.t = 100.125
    assert fab.arrived(0, 0) and fab.projected_done(0, 0) == 100.125
    fab.close()


def test_a_message_of_no_bytes_arrives_after_the_latency_alone(tmp_path, clock):
    fab = make(tmp_path, [FlowSpec(0, 1, 0, 1, 0)], 1e6, 0.25)
    both(fab, 0)
    clock.t = 100.25
    assert fab.arrived(0, 0) and fab.projected_done(0, 0) == 100.25
    fab.close()


def test_a_nic_slower_than_a_byte_a_second(tmp_path, clock):
    fab = make(tmp_path, [FlowSpec(0, 1, 0, 1, 1)], 0.25, 0.0)              # one byte at 1/4 B/s: 4 s
    both(fab, 0)
    clock.t = 103.5
    assert not fab.arrived(0, 0)
    clock.t = 104.0
    assert fab.arrived(0, 0) and fab.projected_done(0, 0) == 104.0
    fab.close()


def test_each_template_has_its_own_latency(tmp_path, clock):
    # template 0: node 0 -> 1 (latencies 0.5 and 0.25), template 1: node 2 -> 1 (0.125 and 0.25)
    fab = make(tmp_path, [FlowSpec(0, 1, 0, 1, 1024), FlowSpec(2, 1, 2, 1, 1024)], 1024.0, [0.5, 0.25, 0.125])
    np.testing.assert_array_equal(fab.flow_latency, [0.5, 0.25])
    both(fab, 1, 0)
    clock.t = 102.0
    assert fab.projected_done(1, 0) == 100.0 + 1.0 + 0.25
    both(fab, 0, 1)
    clock.t = 110.0
    assert fab.projected_done(0, 1) == 102.0 + 1.0 + 0.5
    fab.close()


def test_opening_the_table_keeps_what_other_ranks_posted(tmp_path, clock):
    fab = make(tmp_path, [FlowSpec(0, 1, 0, 1, 1024)], 1024.0, 0.0)
    fab.post(0, 0, "src")
    other = SharedFabric(str(tmp_path / "fabric"), fab.templates, np.full(3, 1024.0), np.zeros(3), 1.0)
    clock.t = 100.5
    other.post(0, 0, "dst")
    clock.t = 101.5
    assert fab.arrived(0, 0) and other.arrived(0, 0) and fab.projected_done(0, 0) == 101.5
    other.close()
    fab.close()
