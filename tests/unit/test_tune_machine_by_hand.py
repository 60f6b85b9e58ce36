"""hpcps.tune.models.machine.MachineModel's parametric form, priors and grouping, checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpcps.cluster import Cluster, Node, NodeType
from hpcps.tune.models.machine import CONFIG_SD, PER_TYPE, MachineModel, _amdahl, _group, _sigmoid

FAST = NodeType("fast", speed=2.0, cores=4, nic_gbps=8.0, latency_us=100.0, fixed_ms=3.0)
SLOW = NodeType("slow", speed=0.5, cores=2, nic_gbps=1.6, latency_us=20.0)
CLUSTER = Cluster("c", (FAST, SLOW), (Node("a1", FAST), Node("b1", SLOW), Node("b2", SLOW)))


def theta_of(model, a, b, per):
    """theta from global log a, log b and per type [c0, d_a, d_b, qa, qb, o] (plain values)."""
    th = [math.log(a), math.log(b)]
    for c0, da, db, qa, qb, o in per:
        th += [math.log(c0), da, db, math.log(qa / (1 - qa)), math.log(qb / (1 - qb)), math.log(o)]
    return np.array(th)


def test_priors_follow_the_cluster_file():
    m = MachineModel(CLUSTER)
    assert PER_TYPE == ("log_c0", "d_a", "d_b", "logit_qa", "logit_qb", "log_o")
    assert len(m.prior_mean) == 2 + 6 * 2
    np.testing.assert_allclose(m.prior_mean[:2], [math.log(1e-4)] * 2)
    np.testing.assert_allclose(m.prior_sd[:2], [5.0, 5.0])
    fast, slow = m.prior_mean[2:8], m.prior_mean[8:]
    assert fast[0] == pytest.approx(math.log(3e-3)) and slow[0] == pytest.approx(math.log(1e-6))
    assert fast[5] == slow[5] == pytest.approx(math.log(1.0))
    assert list(fast[1:5]) == [0.0] * 4
    np.testing.assert_allclose(m.prior_sd[2:8], [1.0, 0.7, 0.7, 1.5, 1.5, 1.5])
    np.testing.assert_allclose(m.prior_sd[8:], [2.0, 0.7, 0.7, 1.5, 1.5, 1.5])     # no fixed_ms: wider
    np.testing.assert_array_equal(m.theta, m.prior_mean)
    np.testing.assert_allclose(np.diag(m.cov), m.prior_sd ** 2)
    assert m.noise_sd == 0.1 and m.gps == {} and not m.seen.any()
    np.testing.assert_array_equal(m.speed, [2.0, 0.5])
    np.testing.assert_array_equal(m.cores, [4.0, 2.0])


def test_constants_and_the_form_by_hand():
    m = MachineModel(CLUSTER)
    th = theta_of(m, 1e-3, 2e-4, [(1e-3, 0.1, -0.2, 0.25, 0.75, 0.5), (2e-3, 0.0, 0.3, 0.5, 0.9, 2.0)])
    c = m.constants(th)
    assert c["c0"].shape == (1, 2)
    np.testing.assert_allclose(c["c0"][0], [1e-3, 2e-3])
    np.testing.assert_allclose(c["a"][0], [1e-3 * math.exp(0.1) / 2.0, 1e-3 / 0.5])
    np.testing.assert_allclose(c["b"][0], [2e-4 * math.exp(-0.2) / 2.0, 2e-4 * math.exp(0.3) / 0.5])
    np.testing.assert_allclose(c["qa"][0], [0.25, 0.5])
    np.testing.assert_allclose(c["qb"][0], [0.75, 0.9])
    np.testing.assert_allclose(c["o"][0], [0.5, 2.0])

    def by_hand(j, k, t, T):
        cores = [4.0, 2.0][j]
        t = max(t, 1.0)
        T = max(T, t)
        s = t * min(1.0, cores / T)
        amd = lambda q: (1 - q) / min(1.0, s) + q / s  # noqa: E731
        over = 1 + c["o"][0, j] * max(0.0, T / cores - 1)
        return c["c0"][0, j] + (c["a"][0, j] * amd(c["qa"][0, j]) + c["b"][0, j] * k * amd(c["qb"][0, j])) * over

    cases = [(0, 8, 1, 1), (0, 8, 4, 4), (0, 16, 2, 8), (1, 8, 1, 1), (1, 32, 2, 6), (1, 4, 0, 0), (0, 4, 3, 1)]
    for j, k, t, T in cases:
        assert m.form(th, j, k, t, T)[0] == pytest.approx(by_hand(j, k, t, T), rel=1e-12), (j, k, t, T)
    # broadcast over inputs, and over samples of theta
    ti = np.array([[0, 1], [1, 0]])
    got = m.form(np.stack([th, th]), ti, np.array([[8, 32], [4, 16]]), 2, np.array([[2, 6], [2, 8]]))
    assert got.shape == (2, 2, 2)
    assert got[1, 0, 1] == pytest.approx(by_hand(1, 32, 2, 6), rel=1e-12)
    assert got[0, 1, 1] == pytest.approx(by_hand(0, 16, 2, 8), rel=1e-12)
    # each input may carry the shape: threads here, node threads there
    by_t = m.form(th, 0, 8, np.array([1, 2, 4]), 1)
    assert by_t.shape == (1, 3)
    np.testing.assert_allclose(by_t[0], [by_hand(0, 8, t, 1) for t in (1, 2, 4)], rtol=1e-12)
    by_T = m.form(th, 1, 8, 1, np.array([[1], [4]]))
    assert by_T.shape == (1, 2, 1)
    np.testing.assert_allclose(by_T[0, :, 0], [by_hand(1, 8, 1, T) for T in (1, 4)], rtol=1e-12)
    by_k = m.form(th, 1, np.array([1.0, 64.0]), 1, 1)
    np.testing.assert_allclose(by_k[0], [by_hand(1, k, 1, 1) for k in (1.0, 64.0)], rtol=1e-12)


def test_amdahl_and_sigmoid():
    assert _amdahl(np.array(0.25), np.array(4.0)) == pytest.approx(0.75 + 0.0625)
    assert _amdahl(np.array(0.25), np.array(0.5)) == pytest.approx(0.75 / 0.5 + 0.25 / 0.5)
    assert _sigmoid(0.0) == 0.5 and _sigmoid(math.log(3.0)) == pytest.approx(0.75)


def test_without_residual_gps_a_prediction_is_the_linearised_form():
    m = MachineModel(CLUSTER)
    th = m.theta[None]
    base = m.form(th, 0, 8, 2, 2)
    np.testing.assert_allclose(m.linearized(th, 0, 8, 2, 2), base, rtol=1e-12)
    np.testing.assert_allclose(m.predict(th, 0, 8, 2, 2), base, rtol=1e-12)
    # a draw off the fit moves the log time along the gradient: for c0 of type 0 alone, by exactly
    # c0's share of the time (d log f / d log c0 = c0 / f)
    moved = th.copy()
    moved[0, 2] += 0.01
    f = base[0]
    c0 = m.constants(th)["c0"][0, 0]
    assert m.linearized(moved, 0, 8, 2, 2)[0] == pytest.approx(f * math.exp(0.01 * c0 / f), rel=1e-6)
    # without GPs a worker's residual is none on average and CONFIG_SD in spread; a rank that does not
    # work (batch 0) has neither
    mu, sd = m.residual(np.array([0, 1]), np.array([8.0, 0.0]), np.array([2.0, 1.0]), np.array([2.0, 1.0]))
    assert mu.tolist() == [0.0, 0.0] and sd.tolist() == [CONFIG_SD, 0.0]
    z = np.array([0.0, 1.0])
    np.testing.assert_allclose(m.predict(np.repeat(th, 2, 0), 0, 8, 2, 2, z=z), base[0] * np.exp(CONFIG_SD * z),
                               rtol=1e-12)


def test_a_residual_gp_scales_the_prediction():
    m = MachineModel(CLUSTER)

    class GP:
        def __init__(self):
            self.asked = []

        def predict(self, X):
            self.asked.append(X.copy())
            return np.full(len(X), 0.2)
    gp = GP()
    m.gps, m.gp_sd = {1: gp}, {1: 0.5}
    th = m.theta[None]
    ti, k, t, T = np.array([0, 1, 1, 1]), np.array([8.0, 8.0, 8.0, 0.0]), np.array([2.0, 1.0, 1.0, 1.0]), \
        np.array([2.0, 2.0, 2.0, 1.0])
    mu, sd = m.residual(ti, k, t, T)
    np.testing.assert_allclose(mu, [0.0, 0.2, 0.2, 0.0])          # type 1 workers only (k > 0)
    np.testing.assert_allclose(sd, [CONFIG_SD, math.hypot(0.5, CONFIG_SD), math.hypot(0.5, CONFIG_SD), 0.0])
    # the two identical settings are predicted once: features log1p(k) (k at least 1), t / cores, T / cores
    [X] = gp.asked
    np.testing.assert_allclose(X, [[math.log1p(1.0), 0.5, 0.5], [math.log1p(8.0), 0.5, 1.0]])
    base = m.linearized(th, ti, k, t, T)
    np.testing.assert_allclose(m.predict(th, ti, k, t, T), base * np.exp(mu), rtol=1e-12)
    z = np.array([1.5])
    np.testing.assert_allclose(m.predict(th, ti, k, t, T, z=z), base * np.exp(mu + 1.5 * sd), rtol=1e-12)


def test_group_takes_worker_rows_by_setting():
    from hpcps.tune.observations import empty
    obs = empty(6)
    obs["type"] = [0, 0, 0, 1, 1, 0]
    obs["batch"] = [8, 8, 8, 1, 0, 8]                                # a worker of one sample counts too
    obs["threads"] = [2, 2, 2, 1, 1, 2]
    obs["node_threads"] = [2, 2, 2, 0, 1, 4]
    obs["compute_s"] = [1.0, math.e, math.e ** 2, 3.0, 5.0, 0.0]     # the last two: a server, no time
    ti, k, t, T, mean, count, var = _group(obs)
    assert ti.tolist() == [0, 1] and k.tolist() == [8.0, 1.0] and t.tolist() == [2.0, 1.0]
    assert T.tolist() == [2.0, 1.0]                                  # at least the worker's own threads
    np.testing.assert_allclose(mean, [1.0, math.log(3.0)])
    np.testing.assert_allclose(count, [3.0, 1.0])
    np.testing.assert_allclose(var, [1.0, 0.0])                      # sample variance of 0, 1, 2
    assert _group(empty(0)) is None


def test_the_noise_is_pooled_over_every_setting_run_more_than_once():
    """Log times 0, 0.1, 0.2 at one setting (variance 0.01, two degrees of freedom), 0 and 0.4 at another
    (0.08, one), 0.3 alone at a third (none): pooled (2 x 0.01 + 0.08) / 3, the noise its square root."""
    from hpcps.tune.observations import empty
    logs = [0.0, 0.1, 0.2, 0.0, 0.4, 0.3]
    obs = empty(len(logs))
    obs["type"] = [0, 0, 0, 1, 1, 1]
    obs["batch"] = [8, 8, 8, 4, 4, 16]
    obs["threads"] = obs["node_threads"] = 1
    obs["compute_s"] = np.exp(logs)
    m = MachineModel(CLUSTER)
    m.fit(obs)
    assert m.noise_sd == pytest.approx(math.sqrt(0.1 / 3), rel=1e-9)
    assert m.seen.tolist() == [True, True]


def test_each_settings_mean_enters_its_types_gp_with_the_noise_of_a_mean(monkeypatch):
    """A setting run c times enters the residual GP as one point whose noise variance is noise_sd^2 / c,
    that of a mean of c observations; a type with fewer settings than MIN_GP_ROWS gets no GP."""
    from hpcps.tune.models import machine
    from hpcps.tune.observations import empty
    calls = []
    real = machine.fit_residual_gp

    def spy(X, y, **kw):
        calls.append((len(X), kw))
        return real(X, y, **kw)
    monkeypatch.setattr(machine, "fit_residual_gp", spy)
    rng = np.random.default_rng(0)
    batches = [1, 2, 4, 8, 16, 32, 64]
    runs = [1, 2, 3, 4, 1, 2, 3]
    rows = [(b, c) for b, c in zip(batches, runs) for _ in range(c)]
    obs = empty(len(rows) + 2)
    obs["type"] = [0] * len(rows) + [1, 1]
    obs["batch"] = [b for b, _ in rows] + [8, 8]
    obs["threads"] = obs["node_threads"] = 1
    obs["compute_s"] = np.exp(rng.normal(-5, 0.1, len(obs)))
    m = MachineModel(CLUSTER)
    m.fit(obs)
    assert len(calls) == 1 and calls[0][0] == len(batches) and list(m.gps) == [0]
    np.testing.assert_allclose(calls[0][1]["alpha"], m.noise_sd ** 2 / np.array(runs, float) + CONFIG_SD ** 2,
                               rtol=1e-12)


# Reference step costs (seconds) of cifar-resnet per batch size as one testbed run recorded them
# (hpcps/emulate/step_costs.py): each timed once, in the run that first needed it, so each lies off a
# smooth fixed + per-sample cost by a quirk of its own (log sd 0.13 here).
QUIRKY_STEPS = {1: 2.900e-3, 2: 5.578e-3, 3: 6.073e-3, 4: 7.900e-3, 5: 10.447e-3, 6: 10.994e-3, 7: 11.639e-3,
                8: 17.584e-3, 9: 19.532e-3, 10: 22.648e-3, 11: 17.510e-3, 12: 20.023e-3, 13: 28.700e-3,
                14: 20.882e-3, 15: 25.664e-3, 16: 31.717e-3, 17: 26.625e-3, 18: 39.475e-3, 20: 44.656e-3,
                22: 36.205e-3, 26: 52.088e-3, 27: 45.656e-3, 28: 49.144e-3}


def test_a_few_quirky_configurations_do_not_bend_the_fit():
    """A 10-node cluster's first five trials on the testbed saw its slow type (speed 0.5, 2 cores) at
    four configurations only, each charged as the emulation charges it (the reference step of its batch
    size, the calibrated thread model, the speed), repeated without noise. Weighted by that noise alone,
    the fit passed through all four and charged batch 13 on two threads half its time; with each
    configuration's own quirk (CONFIG_SD) in the weights it stays near the truth elsewhere too."""
    from hpcps.sim import load_profiles
    from hpcps.tune.observations import empty
    prof = load_profiles().workload("cifar-resnet")
    types = (NodeType("big", speed=4.0, cores=8, nic_gbps=1.0, latency_us=20.0, fixed_ms=3.0),
             NodeType("small", speed=2.0, cores=4, nic_gbps=1.0, latency_us=20.0, fixed_ms=2.0),
             NodeType("slow", speed=0.5, cores=2, nic_gbps=1.0, latency_us=100.0))
    cluster = Cluster("c", types, tuple(Node(f"n{j}", t) for j, t in enumerate(types)))

    def charged(j, k, t, T):
        ty = types[j]
        factor = prof.step_time(k, t, ty.cores, T) / prof.step_time(k, 1, 1, 1)
        return QUIRKY_STEPS[k] * factor / ty.speed + ty.fixed_ms / 1e3

    seen = [(0, 7, 1, 1), (0, 22, 8, 8), (0, 27, 8, 8), (0, 26, 8, 8), (0, 28, 8, 8),
            (1, 7, 1, 1), (1, 11, 4, 4), (1, 14, 4, 4), (1, 20, 4, 4), (1, 18, 4, 4), (1, 13, 4, 4),
            (2, 7, 1, 1), (2, 6, 1, 1), (2, 3, 2, 2), (2, 2, 2, 2)]
    obs = empty(len(seen) * 6)
    for i, (j, k, t, T) in enumerate(seen * 6):
        obs[i] = (i // len(seen), 0, j, j, k, t, T, False, charged(j, k, t, T), 0.0, 0.0, 0.0)
    m = MachineModel(cluster, (prof.fixed_parallel, prof.per_sample_parallel, prof.oversubscription))
    m.fit(obs)
    assert m.noise_sd == 0.01                       # repeats alike: the floor
    # Elsewhere the best a smooth form can do is the costs' own smooth trend (fixed + per-sample, fitted
    # to all the batch sizes above): the fit from 15 configurations stays within 0.3 of it (log; 0.73 without
    # CONFIG_SD).
    k_all = np.array(list(QUIRKY_STEPS), float)
    trend = np.polyfit(k_all, np.array(list(QUIRKY_STEPS.values())), 1)
    for j, k, t, T in [(2, 13, 2, 2), (2, 12, 2, 2), (2, 20, 2, 2), (2, 9, 1, 1), (1, 5, 2, 2), (0, 3, 4, 4)]:
        ty = types[j]
        smooth = np.polyval(trend, k) * prof.step_time(k, t, ty.cores, T) / prof.step_time(k, 1, 1, 1) / ty.speed \
            + ty.fixed_ms / 1e3
        got = m.predict(m.theta[None], j, k, t, T)[0]
        assert abs(math.log(got / smooth)) < 0.3, (j, k, t, T, got, smooth)
