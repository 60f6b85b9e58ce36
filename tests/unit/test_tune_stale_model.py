"""hpcps.tune.models.stale.stale_iteration_times on clusters small enough to work out by hand.

Each expected value is written out from the composition's rules (the module's docstring) for these
two- and three-node layouts, one term at a time."""

from __future__ import annotations

import numpy as np
import pytest

from hpcps.tune.models.stale import stale_iteration_times

P = 100.0          # the model's pull bytes


def two_nodes(c=(5.0, 4.0), B=(100.0, 50.0), L=(0.1, 0.3), agg=0.5, apply_one=0.1, batches=(2, 6)):
    """Node 0 serves and works, node 1 works."""
    servers = np.array([[True, False]])
    workers = np.array([[True, True]])
    compute = np.array(c)[None, None]
    bw = np.array(B)[None, None]
    lat = np.array(L)[None, None]
    aggregate = np.array([agg, 0.0])[None, None]
    apply = np.array([apply_one, 0.0])[None, None]
    return servers, workers, compute, bw, lat, aggregate, apply, np.array([batches], float)


def test_ssp_two_nodes_the_slowest_cycle_sets_the_pace():
    s, w, c, bw, lat, agg, ap, k = two_nodes()
    got = stale_iteration_times("ssp", 1, s, w, c, bw, lat, agg, ap, P, k)
    # node 1 pushes its slice out of its NIC (100 / 50 = 2 s; into node 0's: 1 s), one latency (0.3)
    # later: cycle 4 + 2.3 = 6.3; node 0: 5 + its aggregation 0.5 = 5.5. Pull: 2 + 0.3; (0.5 + 2.3) / 1.
    assert got.shape == (1, 1)
    assert got[0, 0] == pytest.approx(6.3, rel=1e-12)


def test_ssp_the_bound_on_aggregation_and_pull():
    s, w, c, bw, lat, agg, ap, k = two_nodes(c=(0.1, 0.1), agg=4.0)
    # cycles 0.1 + 4 = 4.1 and 0.1 + 2.3 = 2.4; (4 + 2.3) / 1 = 6.3 is longer; busiest: max(1, 4)
    assert stale_iteration_times("ssp", 1, s, w, c, bw, lat, agg, ap, P, k)[0, 0] == pytest.approx(6.3)
    # staleness 2 halves it: 3.15, still over the cycles
    assert stale_iteration_times("ssp", 2, s, w, c, bw, lat, agg, ap, P, k)[0, 0] == pytest.approx(4.1)
    assert stale_iteration_times("ssp", 3, s, w, c, bw, lat, agg, ap, P, k)[0, 0] == pytest.approx(4.1)


def three_nodes(agg=3.0, c=0.1):
    """Node 0 only serves; nodes 1 and 2 work."""
    servers = np.array([[True, False, False]])
    workers = np.array([[False, True, True]])
    compute = np.array([0.0, c, c])[None, None]
    bw = np.array([50.0, 200.0, 200.0])[None, None]
    lat = np.array([0.01, 0.02, 0.03])[None, None]
    aggregate = np.array([agg, 0.0, 0.0])[None, None]
    apply = np.array([0.05, 0.0, 0.0])[None, None]
    return servers, workers, compute, bw, lat, aggregate, apply, np.array([[0, 1, 3]], float)


def test_ssp_pulls_slower_than_a_round_skip_versions():
    s, w, c, bw, lat, agg, ap, k = three_nodes()
    # pushes: 0.02 + max(100/200, 100/50) = 2.02 and 2.03 -> cycles 2.12, 2.13; node 0's NIC takes two
    # slices a round (4 s) and sends two pulls: pull = 4 + 0.03 = 4.03; (3 + 4.03) / 2 = 3.515; the
    # round (4) is shorter than a pull: a version waits half a pull more, (3 + 1.5 * 4.03) / 2
    got = stale_iteration_times("ssp", 2, s, w, c, bw, lat, agg, ap, P, k)[0, 0]
    assert got == pytest.approx((3 + 1.5 * 4.03) / 2, rel=1e-12)
    # staleness 1: (3 + 4.03) = 7.03 is longer than a pull: no skipping
    assert stale_iteration_times("ssp", 1, s, w, c, bw, lat, agg, ap, P, k)[0, 0] == pytest.approx(7.03)
    # little aggregation: the round is the busiest NIC's 4 s, and skipping asks (0.1 + 6.045) / 2 < 4
    s, w, c, bw, lat, agg, ap, k = three_nodes(agg=0.1)
    assert stale_iteration_times("ssp", 2, s, w, c, bw, lat, agg, ap, P, k)[0, 0] == pytest.approx(4.0)


def test_ssp_with_push_bytes_of_their_own():
    s, w, c, bw, lat, agg, ap, k = three_nodes(agg=0.0, c=1.0)
    push = np.array([[0.0, 400.0, 40.0]])
    # node 1: 0.02 + max(400/200, 400/50) = 8.02 -> cycle 9.02; node 2: 0.03 + max(0.2, 0.8) -> 1.83;
    # node 0's NIC takes 440/50 = 8.8 a round; pull (two 100-byte slices out of node 0) 4 + 0.03
    got = stale_iteration_times("ssp", 1, s, w, c, bw, lat, agg, ap, P, k, push_bytes=push)[0, 0]
    assert got == pytest.approx(9.02, rel=1e-12)


def test_asp_two_nodes_each_worker_at_its_own_rate():
    s, w, c, bw, lat, agg, ap, k = two_nodes()
    # cycles: node 0 steps 5 s (its pieces are its own); node 1: 4 + 2.3 = 6.3 (its pull: 2 + 0.3)
    # samples a second: 2 / 5 + 6 / 6.3; node 0's NIC and rank are busy well under 1
    want = 8 / (2 / 5 + 6 / 6.3)
    got = stale_iteration_times("asp", 0, s, w, c, bw, lat, agg, ap, P, k)
    assert got.shape == (1, 1) and got[0, 0] == pytest.approx(want, rel=1e-12)


def test_asp_a_saturated_server_rank_slows_every_worker():
    s, w, c, bw, lat, agg, ap, k = two_nodes(apply_one=10.0)
    # node 0's rank applies (1/5 + 1/6.3) pushes a second of 10 s each: busy 3.587 of every second
    busy = (1 / 5 + 1 / 6.3) * 10.0
    got = stale_iteration_times("asp", 0, s, w, c, bw, lat, agg, ap, P, k)[0, 0]
    assert got == pytest.approx(8 / (2 / 5 + 6 / 6.3) * busy, rel=1e-12)


def test_asp_a_saturated_server_nic_slows_every_worker():
    s, w, c, bw, lat, agg, ap, k = three_nodes(c=0.1)
    bw = np.array([1.0, 200.0, 200.0])[None, None]
    # pushes: 0.02 + max(0.5, 100) = 100.02 -> cycles 100.12 and 100.13 (over their pulls, 0.5 + lat);
    # node 0's NIC takes 100 bytes at 1 B/s per push of each: busy 100 * (1/100.12 + 1/100.13) > 1
    r1, r2 = 1 / 100.12, 1 / 100.13
    load = 100 * (r1 + r2)
    want = 4 / ((1 * r1 + 3 * r2) / load)
    got = stale_iteration_times("asp", 0, s, w, c, bw, lat, agg, ap, P, k)[0, 0]
    assert got == pytest.approx(want, rel=1e-12)


def test_asp_a_worker_s_pull_can_be_its_pace():
    s, w, c, bw, lat, agg, ap, k = three_nodes(c=0.0)
    bw = np.array([1000.0, 10.0, 1000.0])[None, None]
    # node 1: push 0.02 + max(100/10, 100/1000) = 10.02; pull in 10 + 0.02 = 10.02 too; node 2: push
    # 0.03 + 0.1 = 0.13, pull 0.1 + 0.03: cycles 10.02 and 0.13; node 0 busy well under 1
    want = 4 / (1 / 10.02 + 3 / 0.13)
    got = stale_iteration_times("asp", 0, s, w, c, bw, lat, agg, ap, P, k)[0, 0]
    assert got == pytest.approx(want, rel=1e-12)


def test_ssp_each_candidate_s_pull_is_its_own():
    """Candidate A: three_nodes (node 0 serves two workers over its 50 B/s NIC: pull 4 + 0.03, 7.03 at
    staleness 1). Candidate B: node 1 (200 B/s) serves node 2 alone, updating in 3 s: node 2's push
    0.03 + 0.5 (cycle 0.63), its pull 0.5 + 0.03; (3 + 0.53) / 1 = 3.53 sets the pace, also next to A."""
    s, w, c, bw, lat, agg, ap, k = three_nodes()
    S = np.concatenate([s, [[False, True, False]]])
    W = np.concatenate([w, [[False, False, True]]])
    C = np.concatenate([c, c], axis=1)
    A = np.concatenate([agg, [[[0.0, 3.0, 0.0]]]], axis=1)
    AP = np.concatenate([ap, [[[0.0, 0.05, 0.0]]]], axis=1)
    K = np.concatenate([k, [[0.0, 0.0, 4.0]]])
    got = stale_iteration_times("ssp", 1, S, W, C, bw, lat, A, AP, P, K)
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got[0], [7.03, 3.53], rtol=1e-12)


def test_asp_a_worker_s_pull_of_whole_shards_outlasts_its_small_pushes():
    """As test_asp_a_worker_s_pull_can_be_its_pace, with pushes of 10 bytes (a codec's): node 1 pushes in
    0.02 + max(10/10, 10/1000) = 1.02, but pulls 100 bytes through its 10 B/s NIC: 10 + 0.02 = 10.02
    is its cycle; node 2: push 0.03 + 0.01, pull 0.1 + 0.03 = 0.13; node 0 busy well under 1."""
    s, w, c, bw, lat, agg, ap, k = three_nodes(c=0.0)
    bw = np.array([1000.0, 10.0, 1000.0])[None, None]
    push = np.array([[0.0, 10.0, 10.0]])
    want = 4 / (1 / 10.02 + 3 / 0.13)
    got = stale_iteration_times("asp", 0, s, w, c, bw, lat, agg, ap, P, k, push_bytes=push)[0, 0]
    assert got == pytest.approx(want, rel=1e-12)


def test_asp_a_server_nic_saturated_by_its_pulls_slows_every_worker():
    """As test_asp_a_saturated_server_nic_slows_every_worker with pushes of 10 bytes (a codec's): node 0's
    NIC takes in 10 bytes a push but sends 100 a pull, so what it sends bounds the rates. Pushes: 0.02 +
    max(10/200, 10/1) = 10.02 and 10.03 -> cycles 10.12 and 10.13 (pulls 100/200 + lat, shorter); busy
    out: 100 * (1/10.12 + 1/10.13) > 1, in: a tenth of it."""
    s, w, c, bw, lat, agg, ap, k = three_nodes(c=0.1)
    bw = np.array([1.0, 200.0, 200.0])[None, None]
    push = np.array([[0.0, 10.0, 10.0]])
    r1, r2 = 1 / 10.12, 1 / 10.13
    load = 100 * (r1 + r2)
    want = 4 / ((1 * r1 + 3 * r2) / load)
    got = stale_iteration_times("asp", 0, s, w, c, bw, lat, agg, ap, P, k, push_bytes=push)[0, 0]
    assert got == pytest.approx(want, rel=1e-12)


def test_ssp_each_candidate_s_aggregation_bounds_its_own_pace():
    """Two candidates of one layout (two_nodes, steps of 0.1 s): one aggregates its shard in 4 s, which
    with the pull sets its pace (test_ssp_the_bound_on_aggregation_and_pull: 6.3); the other in 0.5 s:
    0.5 + 2.3 = 2.8, over its slowest cycle (node 1's 0.1 + 2.3 = 2.4), also next to the first."""
    s, w, c, bw, lat, agg, ap, k = two_nodes(c=(0.1, 0.1))
    S, W, K = np.concatenate([s, s]), np.concatenate([w, w]), np.concatenate([k, k])
    A = np.array([[[4.0, 0.0], [0.5, 0.0]]])
    got = stale_iteration_times("ssp", 1, S, W, np.concatenate([c, c], axis=1), bw, lat, A,
                                np.concatenate([ap, ap], axis=1), P, K)
    np.testing.assert_allclose(got[0], [6.3, 2.8], rtol=1e-12)


def test_samples_and_layouts_broadcast():
    s, w, c, bw, lat, agg, ap, k = two_nodes()
    c2 = np.concatenate([c, c * 2])                        # two samples
    got = stale_iteration_times("ssp", 1, s, w, c2, np.concatenate([bw, bw]), np.concatenate([lat, lat]),
                                np.concatenate([agg, agg]), np.concatenate([ap, ap]), P, k)
    assert got.shape == (2, 1)
    # sample 2: cycles 10 + 0.5 and 8 + 2.3
    assert got[:, 0] == pytest.approx([6.3, 10.5])


@pytest.mark.parametrize("mode, staleness", [("ssp", 0), ("bsp", 1), ("asp ", 0)])
def test_only_ssp_with_staleness_or_asp(mode, staleness):
    s, w, c, bw, lat, agg, ap, k = two_nodes()
    with pytest.raises(ValueError) as e:
        stale_iteration_times(mode, staleness, s, w, c, bw, lat, agg, ap, P, k)
    assert str(e.value) == f"stale composition of ssp (staleness >= 1) or asp; got {mode!r}, {staleness}"


@pytest.mark.parametrize("mode, staleness", [("ssp", 1), ("ssp", 2), ("asp", 0)])
def test_candidates_are_composed_each_on_its_own(mode, staleness):
    """Several layouts at once (rows of servers and workers) give what each gives alone."""
    s, w, c, bw, lat, agg, ap, k = two_nodes()
    layouts = [
        (np.array([True, False]), np.array([True, True]), np.array([2.0, 6.0])),
        (np.array([True, True]), np.array([True, True]), np.array([4.0, 8.0])),     # another global batch
        (np.array([False, True]), np.array([True, False]), np.array([8.0, 0.0])),
    ]
    S = np.stack([a for a, _, _ in layouts])
    W = np.stack([b for _, b, _ in layouts])
    K = np.stack([kk for _, _, kk in layouts])
    n = len(layouts)
    C = np.repeat(c, n, axis=1)
    A = np.repeat(np.array([[[0.5, 0.7]]]), n, axis=1) * S[None]
    AP = np.repeat(np.array([[[0.1, 0.2]]]), n, axis=1) * S[None]
    together = stale_iteration_times(mode, staleness, S, W, C, bw, lat, A, AP, P, K)
    assert together.shape == (1, n)
    for i in range(n):
        alone = stale_iteration_times(mode, staleness, S[i:i + 1], W[i:i + 1], C[:, i:i + 1], bw, lat,
                                      A[:, i:i + 1], AP[:, i:i + 1], P, K[i:i + 1])
        assert together[0, i] == pytest.approx(alone[0, 0], rel=1e-12)
    # two servers halve each shard: the second layout's pushes and pulls carry 50 bytes
    assert len(set(np.round(together[0], 9))) == n
