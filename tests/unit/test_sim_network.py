import numpy as np
import pytest

from hpcps.sim.network import equal_share_rates, flow_rates, max_min_rates


def reference_max_min(src, dst, cap):
    """Textbook progressive filling, one NIC per round."""
    rates, left, todo = np.zeros(len(src)), cap.astype(float).copy(), set(range(len(src)))
    while todo:
        count = {}
        for f in todo:
            count[src[f]] = count.get(src[f], 0) + 1
            count[dst[f]] = count.get(dst[f], 0) + 1
        res, share = min(((r, left[r] / c) for r, c in count.items()), key=lambda x: x[1])
        for f in [f for f in todo if res in (src[f], dst[f])]:
            rates[f] = share
            left[src[f]] -= share
            left[dst[f]] -= share
            todo.discard(f)
    return rates


def test_two_flows_through_one_nic_each_get_half():
    cap = np.array([10.0, 10, 10, 10, 10, 10])      # egress of nodes 0..2, then their ingress
    for fn in (max_min_rates, equal_share_rates):
        np.testing.assert_allclose(fn(np.array([0, 0]), np.array([4, 5]), cap), [5, 5])


def test_max_min_gives_unused_capacity_to_others_and_equal_shares_do_not():
    # Flow 2 is held to 4 by its source; flow 0 shares node 1's ingress with it and takes the rest.
    src, dst, cap = np.array([0, 0, 2]), np.array([4, 5, 4]), np.array([10.0, 10, 4, 10, 10, 10])
    np.testing.assert_allclose(max_min_rates(src, dst, cap), [5, 5, 4])
    src, dst, cap = np.array([0, 1]), np.array([3, 3]), np.array([1.0, 10, 10, 10, 10, 10])
    np.testing.assert_allclose(max_min_rates(src, dst, cap), [1, 9])
    np.testing.assert_allclose(equal_share_rates(src, dst, cap), [1, 5])


def test_max_min_matches_progressive_filling_on_random_networks():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n, f = rng.integers(2, 10), rng.integers(1, 40)
        src, dst = rng.integers(0, n, f), n + rng.integers(0, n, f)
        cap = rng.choice([1.0, 2.5, 10.0], 2 * n) * rng.uniform(0.5, 2, 2 * n)
        np.testing.assert_allclose(max_min_rates(src, dst, cap), reference_max_min(src, dst, cap), rtol=1e-9)


def test_max_min_matches_progressive_filling_where_shares_tie():
    """Capacities of a few round values, so that many NICs fill at exactly the same level: the rounds
    that freeze several NICs at once must freeze tied ones alike."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        n, f = rng.integers(2, 8), rng.integers(1, 30)
        src, dst = rng.integers(0, n, f), n + rng.integers(0, n, f)
        cap = rng.choice([1.0, 2.0, 4.0], 2 * n)
        np.testing.assert_allclose(max_min_rates(src, dst, cap), reference_max_min(src, dst, cap), rtol=1e-9)


def test_rates_never_overfill_a_nic():
    rng = np.random.default_rng(2)
    n = 50
    src, dst = rng.integers(0, n, 3000), n + rng.integers(0, n, 3000)
    cap = rng.choice([1.0, 2.5, 10.0], 2 * n)
    for sharing in ("maxmin", "equal"):
        r = flow_rates(src, dst, cap, sharing)
        load = np.bincount(src, r, minlength=2 * n) + np.bincount(dst, r, minlength=2 * n)
        assert np.all(load <= cap * (1 + 1e-9)) and np.all(r > 0)
    with pytest.raises(ValueError, match="maxmin, equal"):
        flow_rates(src, dst, cap, "fifo")
