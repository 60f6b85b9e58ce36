"""hpcps.tune.models.network.iteration_times on two nodes, worked out by hand.

Node 0 serves (one shard, P bytes) and works; node 1 works. X: a slice over the slower NIC
(max(P / B0, P / B1)); Lm: the larger latency. Node 1's push of its slice is ready at its step's end
(one shard: ready fraction 1) and is in X + Lm later; node 0 updates once it has it and its own step
is done (aggregation a0), then sends the shard back, in X + Lm. Steady state: an iteration is
max(c0, c1 + 2 (X + Lm)) + a0."""

from __future__ import annotations

import numpy as np
import pytest

from hpcps.tune.models.network import Exchange, _max_of_others, _queue, iteration_times

P = 100.0


def layout(c=(5.0, 4.0), B=(100.0, 50.0), L=(0.1, 0.3), a0=0.5):
    return (np.array([[True, False]]), np.array([[True, True]]), np.array(c)[None, None],
            np.array(B)[None, None], np.array(L)[None, None], np.array([a0, 7.0])[None, None])


@pytest.mark.parametrize("c, B, L, a0", [((5.0, 4.0), (100.0, 50.0), (0.1, 0.3), 0.5),
                                         ((10.0, 4.0), (100.0, 50.0), (0.1, 0.3), 0.5),
                                         ((1.0, 2.0), (20.0, 400.0), (0.02, 0.001), 0.25)])
def test_two_nodes_steady_state(c, B, L, a0):
    s, w, comp, bw, lat, agg = layout(c, B, L, a0)
    X, Lm = max(P / B[0], P / B[1]), max(L)
    got = iteration_times(s, w, comp, bw, lat, agg, P)
    assert got.shape == (1, 1)
    assert got[0, 0] == pytest.approx(max(c[0], c[1] + 2 * (X + Lm)) + a0, rel=1e-12)
    # the cold start, one round: every worker pulls at once first (node 1 in X + Lm)
    one = iteration_times(s, w, comp, bw, lat, agg, P, rounds=1)
    assert one[0, 0] == pytest.approx(max(c[0], X + Lm + c[1] + X + Lm) + a0, rel=1e-12)
    assert iteration_times(s, w, comp, bw, lat, agg, P, rounds=0)[0, 0] == pytest.approx(one[0, 0], rel=1e-12)
    assert iteration_times(s, w, comp, bw, lat, agg, P, rounds=3)[0, 0] == pytest.approx(got[0, 0], rel=1e-12)


def test_two_nodes_with_smaller_pushes():
    s, w, comp, bw, lat, agg = layout()
    push = np.array([[0.0, 50.0]])
    # the push's slice: max(50 / 100, 50 / 50) = 1; the pull's still 2; Lm 0.3 each way
    got = iteration_times(s, w, comp, bw, lat, agg, P, push_bytes=push)
    assert got[0, 0] == pytest.approx(max(5.0, 4.0 + 1.0 + 0.3 + 2.0 + 0.3) + 0.5, rel=1e-12)
    detail = iteration_times(s, w, comp, bw, lat, agg, P, push_bytes=push, detail=True)
    assert detail.iteration[0, 0] == pytest.approx(got[0, 0], rel=1e-12)


def test_two_nodes_in_detail():
    s, w, comp, bw, lat, agg = layout()
    ex = iteration_times(s, w, comp, bw, lat, agg, P, detail=True)
    assert isinstance(ex, Exchange)
    assert ex.iteration[0, 0] == pytest.approx(9.1, rel=1e-12)
    # the first pull: node 1 waits X + Lm = 2.3, node 0 copies its own; node 0's step hides its sends
    np.testing.assert_allclose(ex.pull[0, 0], [0.0, 2.3], rtol=1e-12)
    # a push: node 1's slice moves X + Lm once posted; node 0 has it that long after it began
    np.testing.assert_allclose(ex.push[0, 0], [2.3, 2.3], rtol=1e-12)
    # last round, from its first step's start: steps end at c0 and X + Lm + c1; node 0 has every push
    # at the later of its step and node 1's push
    np.testing.assert_allclose(ex.ready[0, 0], [5.0, 6.3], rtol=1e-12)
    np.testing.assert_allclose(ex.done[0, 0], [8.6, 0.0], rtol=1e-12)
    # a dedicated server: its first pull sends to node 1 in X, then the larger latency (node 1's)
    ded = iteration_times(s, np.array([[False, True]]), comp, bw, lat, agg, P, detail=True)
    np.testing.assert_allclose(ded.pull[0, 0], [2.3, 2.3], rtol=1e-12)
    lat2 = np.array([0.3, 0.1])[None, None]                 # the server's latency the larger
    np.testing.assert_allclose(iteration_times(s, np.array([[False, True]]), comp, bw, lat2, agg, P,
                                               detail=True).pull[0, 0], [2.3, 2.3], rtol=1e-12)


def test_candidates_and_samples_are_composed_each_on_its_own():
    layouts = [(np.array([True, False]), np.array([True, True])),
               (np.array([True, True]), np.array([True, True])),
               (np.array([False, True]), np.array([True, False])),
               (np.array([True, False]), np.array([False, True]))]
    S = np.stack([a for a, _ in layouts])
    W = np.stack([b for _, b in layouts])
    n = len(layouts)
    comp = np.array([[[5.0, 4.0]], [[2.0, 9.0]]]).repeat(n, axis=1)           # two samples
    bw = np.array([[[100.0, 50.0]], [[30.0, 60.0]]])
    lat = np.array([[[0.1, 0.3]], [[0.2, 0.05]]])
    agg = np.array([[[0.5, 0.7]], [[0.2, 0.1]]]).repeat(n, axis=1)
    together = iteration_times(S, W, comp, bw, lat, agg, P)
    assert together.shape == (2, n)
    for k in range(2):
        for i in range(n):
            alone = iteration_times(S[i:i + 1], W[i:i + 1], comp[k:k + 1, i:i + 1], bw[k:k + 1], lat[k:k + 1],
                                    agg[k:k + 1, i:i + 1], P)
            assert together[k, i] == pytest.approx(alone[0, 0], rel=1e-12)
    # a dedicated server (layout 4): c1 + 2 (X + Lm) + a0
    assert together[0, 3] == pytest.approx(4.0 + 2 * (2.0 + 0.3) + 0.5, rel=1e-12)


def test_max_of_others_and_the_queue():
    v = np.array([[3.0, 1.0, 2.0, 5.0]])
    assert _max_of_others(v, np.array([[True, True, True, False]])).tolist() == [[2.0, 3.0, 3.0, 3.0]]
    assert _max_of_others(v, np.ones((1, 4), bool)).tolist() == [[5.0, 5.0, 5.0, 3.0]]
    assert _max_of_others(v, np.zeros((1, 4), bool)).tolist() == [[0.0] * 4]
    # slices arriving at 0, 0.5 and 10 through a NIC taking 1 each: through at 1, 2 and 11
    a = np.array([[0.0, 0.5, 10.0, np.inf]])
    assert _queue(a, np.ones((1, 1))).tolist() == [[1.0, 2.0, 11.0, -np.inf]]
    # under fair sharing the first two (one busy spell) end together
    assert _queue(a, np.ones((1, 1)), spells=True).tolist() == [[2.0, 2.0, 11.0, -np.inf]]
    # costs per slice
    assert _queue(a, np.array([[2.0, 1.0, 0.5, 9.0]])).tolist() == [[2.0, 3.0, 10.5, -np.inf]]
    # the same with a leading axis of one (one candidate): still a cost per slice
    assert _queue(a[None], np.array([[[2.0, 1.0, 0.5, 9.0]]])).tolist() == [[[2.0, 3.0, 10.5, -np.inf]]]


def test_network_model_priors_and_node_constants():
    import math

    from hpcps.cluster import Cluster, Node, NodeType
    from hpcps.tune.models.network import NetworkModel
    fast = NodeType("fast", speed=2.0, cores=4, nic_gbps=8.0, latency_us=100.0)
    slow = NodeType("slow", speed=0.5, cores=2, nic_gbps=1.6, latency_us=20.0)
    cl = Cluster("c", (fast, slow), (Node("s1", slow), Node("f1", fast), Node("s2", slow)))
    m = NetworkModel(cl)
    assert m.node_type.tolist() == [1, 0, 1]
    np.testing.assert_allclose(m.prior_mean, [math.log(1e9), math.log(0.2e9), math.log(101e-6), math.log(21e-6)])
    np.testing.assert_allclose(m.prior_sd, [0.7, 0.7, 1.0, 1.0])
    np.testing.assert_array_equal(m.theta, m.prior_mean)
    np.testing.assert_allclose(np.diag(m.cov), m.prior_sd ** 2)
    assert m.noise_sd == 0.3
    bw, lat = m.node_params(m.theta)
    assert bw.shape == lat.shape == (1, 1, 3)
    np.testing.assert_allclose(bw[0, 0], [0.2e9, 1e9, 0.2e9])
    np.testing.assert_allclose(lat[0, 0], [21e-6, 101e-6, 21e-6])
    two = np.stack([m.theta, m.theta + np.log(2.0)])
    bw2, lat2 = m.node_params(two)
    assert bw2.shape == (2, 1, 3)
    np.testing.assert_allclose(bw2[1, 0], [0.4e9, 2e9, 0.4e9])
    np.testing.assert_allclose(lat2[1, 0], [42e-6, 202e-6, 42e-6])
    draws = m.samples(5, np.random.default_rng(0))
    assert draws.shape == (5, 4)
    np.testing.assert_array_equal(draws[0], m.theta)
    m.fit([], 1e6)                                         # nothing observed: the prior stays
    np.testing.assert_array_equal(m.theta, m.prior_mean)


def test_each_candidate_waits_for_its_own_servers_latency():
    """Three nodes, latencies 0.1, 0.1 and 0.5; candidate A: node 0 serves, node 1 works; candidate B:
    node 2 serves, node 1 works. Scored together, A's pull still waits only for node 0's latency."""
    S = np.array([[True, False, False], [False, False, True]])
    W = np.array([[False, True, False], [False, True, False]])
    comp = np.array([[[5.0, 4.0, 3.0]]]).repeat(2, axis=1)
    bw = np.array([100.0, 50.0, 100.0])[None, None]
    lat = np.array([0.1, 0.1, 0.5])[None, None]
    agg = np.array([[[0.5, 7.0, 0.25]]]).repeat(2, axis=1)
    ex = iteration_times(S, W, comp, bw, lat, agg, P, detail=True)
    # a slice over the slower NIC: 100 / 50 = 2, then the larger latency: A 0.1, B 0.5 (node 2's)
    np.testing.assert_allclose(ex.pull[0], [[2.1, 2.1, 0.0], [0.0, 2.5, 2.5]], rtol=1e-12)
    # dedicated servers: c1 + 2 (X + Lm) + the server's update
    np.testing.assert_allclose(ex.iteration[0], [4.0 + 2 * 2.1 + 0.5, 4.0 + 2 * 2.5 + 0.25], rtol=1e-12)
    # the cold round too (its time counts the first pull)
    cold = iteration_times(S, W, comp, bw, lat, agg, P, rounds=1, detail=True)
    np.testing.assert_allclose(cold.pull[0], ex.pull[0], rtol=1e-12)


def test_servers_take_the_shards_in_node_order_on_a_big_cluster():
    """17 nodes, as many as numpy sorts by more than insertion: node 0 works (4 s), nodes 1 and 8 serve,
    the rest idle; every NIC 100 B/s and 0.1 s. Two shards of 50 bytes: 0.5 s a slice. With pushes
    posted through the step (forward fraction 0), shard 0 (node 1, the first server) is ready at the
    step's end, shard 1 (node 8) half way. Node 8's slice leaves at 2, is in at 2.6; node 1's at 4.6.
    With node 8 updating in 2 and node 1 in 0.1: updates at 4.6 and 4.7, the worker (ready at 4) takes
    the shards through its NIC at 5.1 and 5.6, then 0.1: 5.7. The other way round: node 1 updates at
    4.6 + 2 = 6.6, and its shard is in at 6.6 + 0.5 + 0.1 = 7.2."""
    N = 17
    servers = np.zeros((1, N), bool)
    servers[0, [1, 8]] = True
    workers = np.zeros((1, N), bool)
    workers[0, 0] = True
    comp = np.zeros((1, 1, N))
    comp[..., 0] = 4.0
    bw, lat = np.full((1, 1, N), 100.0), np.full((1, 1, N), 0.1)
    for a1, a8, want in ((0.1, 2.0, 5.7), (2.0, 0.1, 7.2)):
        agg = np.zeros((1, 1, N))
        agg[..., 1], agg[..., 8] = a1, a8
        got = iteration_times(servers, workers, comp, bw, lat, agg, P, forward_fraction=0.0)
        assert got[0, 0] == pytest.approx(want, rel=1e-12)


def test_the_cold_round_is_not_the_steady_state():
    """Two nodes that both serve and work: c = (1, 4), updates (1, 3), NICs 100 B/s, no latency; two
    shards of 50 bytes (0.5 s a slice), pushed at the step's end. The cold start: both pull at once and
    start at 0.5. Node 1's step ends at 4.5 and its own shard is updated at 7.5 (node 0's push was in
    long before); node 0 has it at 8.0: 7.5 from its start. From then on node 0 starts half a second
    after node 1 (it waits for that pull), and an iteration is node 1's own cycle, 4 + 3 = 7."""
    s = np.array([[True, True]])
    w = np.array([[True, True]])
    comp, bw = np.array([1.0, 4.0])[None, None], np.array([100.0, 100.0])[None, None]
    lat, agg = np.zeros((1, 1, 2)), np.array([1.0, 3.0])[None, None]
    kw = dict(forward_fraction=1.0)
    assert iteration_times(s, w, comp, bw, lat, agg, P, rounds=1, **kw)[0, 0] == pytest.approx(7.5, rel=1e-12)
    assert iteration_times(s, w, comp, bw, lat, agg, P, rounds=0, **kw)[0, 0] == pytest.approx(7.5, rel=1e-12)
    assert iteration_times(s, w, comp, bw, lat, agg, P, **kw)[0, 0] == pytest.approx(7.0, rel=1e-12)
    assert iteration_times(s, w, comp, bw, lat, agg, P, rounds=3, **kw)[0, 0] == pytest.approx(7.0, rel=1e-12)


def test_a_workers_pull_as_a_trace_sees_it_starts_at_its_last_shard():
    """Two dedicated servers (nodes 0 and 1, shards of 50 bytes) and one worker (node 2, step 4 s);
    NICs 100, 100 and 50 B/s, every latency 0.1 s, updates 0.5 s and 3 s. Pushes: shard 1's slice is
    ready at 2/3 of the step (2.667), through the worker's NIC in 1 s, at server 1 at 3.767; shard 0's at
    the step's end, at server 0 at 5.1. Updates end at 5.6 and 6.767. Pulls: shard 0 is in at 6.7, shard
    1 moves from 6.767 and is in at 7.867. A trace counts the pull from when its last shard could start
    (6.767): 1.1 s. The first pull, every shard at once through the worker's NIC, is 2 x 1 + 0.1.
    (Slices: 0.5 s through a server's NIC, 1 s through the worker's.)"""
    s = np.array([[True, True, False]])
    w = np.array([[False, False, True]])
    comp = np.array([0.0, 0.0, 4.0])[None, None]
    bw = np.array([100.0, 100.0, 50.0])[None, None]
    lat = np.full(3, 0.1)[None, None]
    agg = np.array([0.5, 3.0, 0.0])[None, None]
    ex = iteration_times(s, w, comp, bw, lat, agg, P, detail=True)
    np.testing.assert_allclose(ex.pull_steady[0, 0], [0.0, 0.0, 1.1], rtol=1e-12)
    np.testing.assert_allclose(ex.pull[0, 0, 2], 2.1, rtol=1e-12)
    # and its next step starts then: shard 1 posted at 8/3, 1.1 s to server 1, its update 3 s, 1.1 s back
    np.testing.assert_allclose(ex.iteration[0, 0], 8.0 / 3.0 + 1.1 + 3.0 + 1.1, rtol=1e-12)


def test_a_trial_without_observations_is_passed_over_not_the_end_of_the_rows():
    """The network fit's rows: per trial and iteration; a failed trial (no observations) between two
    measured ones adds none, and the trial after it still adds its own; with more rows than max_rows,
    a row per trial (its iterations averaged)."""
    from hpcps.tune.models.network import _stack
    from hpcps.tune.observations import empty

    def obs(iterations, compute):
        o = empty(2 * iterations)
        o["iteration"] = np.repeat(np.arange(iterations), 2)
        o["node"] = o["rank"] = np.tile([0, 1], iterations)
        o["compute_s"] = compute
        return o
    s, w = np.array([True, False]), np.array([True, True])
    trials = [(s, w, obs(2, 1.0)), (s, w, None), (s, w, empty(0)), (s, w, obs(3, 2.0))]
    servers, workers, compute, aggregate, pull, push, push_bytes = _stack(trials, 2)
    assert compute.tolist() == [[1.0, 1.0]] * 2 + [[2.0, 2.0]] * 3 and push_bytes is None
    assert servers.shape == workers.shape == (5, 2)
    assert _stack(trials, 2, max_rows=5)[2].tolist() == compute.tolist()
    assert _stack(trials, 2, max_rows=4)[2].tolist() == [[1.0, 1.0], [2.0, 2.0]]
    assert _stack([(s, w, None)], 2) is None


def test_a_first_pull_ends_when_the_busiest_nic_it_touches_has_moved_its_load():
    """The cold start, two shards of 50 bytes. Node 0 serves and works (step 0, NIC 100 B/s, 0.01 s),
    node 1 serves (NIC 10 B/s, 0.01 s), node 2 works (100 B/s, 1 s away). Node 1's NIC sends its shard
    to both workers: 2 x 50 / 10 = 10 s, the busiest NIC node 0 exchanges with; node 0's sends reach
    node 2, 1 s away. So node 0's first pull is 1 + 10 = 11 s (its own NIC: 0.5 s each way); node 2's,
    receiving both shards (1 s through its NIC), 1 + 10 = 11 s too."""
    s = np.array([[True, True, False]])
    w = np.array([[True, False, True]])
    comp = np.array([0.0, 0.0, 1.0])[None, None]
    bw = np.array([100.0, 10.0, 100.0])[None, None]
    lat = np.array([0.01, 0.01, 1.0])[None, None]
    agg = np.array([0.1, 0.1, 0.0])[None, None]
    ex = iteration_times(s, w, comp, bw, lat, agg, P, detail=True)
    np.testing.assert_allclose(ex.pull[0, 0, [0, 2]], [11.0, 11.0], rtol=1e-12)
