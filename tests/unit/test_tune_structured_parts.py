"""Parts of hpcps.tune.models.structured.StructuredModel checked on their own: the update a server
spends on one worker's push under asp."""

from __future__ import annotations

import numpy as np
import pytest

from hpcps.tune.models.structured import StructuredModel
from hpcps.tune.space import decode_many
from tests.unit.test_tune_models import spread, update_rows


def test_one_push_costs_an_update_with_one_worker_and_its_share_of_the_decoding(slownet):
    _cluster, _job, _profiles, problem = slownet
    model = StructuredModel(problem)
    for codecs, servers in (([1] * 5, (0, 1)), ([0, 1, 1, 2, 2], (0, 1, 2, 3, 4)), ([0] * 5, (2,))):
        d = decode_many(problem.space, spread(problem, codecs, servers)[None])
        m = d.servers.sum(1)
        w = d.workers.sum(1, keepdims=True)
        update = model.aggregate.predict(problem.model_bytes / m, np.ones(1))
        decode = model.codecs.decode_s(d)
        want = np.where(d.servers, update + decode / w, 0.0)
        got = model._apply_one(d)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert (got[d.servers] > 0).all() and not got[~d.servers].any()
        if any(codecs):
            assert (decode[d.servers] > 0).all()


def _obs(iterations, ranks):
    """Observations of ranks [(rank, node, server)], each iteration, with times that tell them apart."""
    from hpcps.tune.observations import empty
    rows = empty(len(iterations) * len(ranks))
    i = 0
    for it in iterations:
        for rank, node, server in ranks:
            r = rows[i]
            r["iteration"], r["rank"], r["node"], r["server"], r["batch"] = it, rank, node, server, 4
            r["compute_s"] = 1.0 + it + 10 * rank
            r["pull_s"] = 0.1 * (it + 1) + rank
            r["push_s"] = 0.2 * (it + 1) + rank
            r["aggregate_s"] = 0.01 * it if server else 0.0
            i += 1
    return rows


def test_the_network_fit_takes_a_row_per_iteration_or_per_trial_on_big_clusters():
    from hpcps.tune.models.network import _mean_over_iterations, _stack
    servers, workers = np.array([True, False, False]), np.array([False, True, True])
    # ranks 0 and 1 on node 1, rank 2 on node 2; node 0 serves (rank 3)
    obs = _obs([0, 1, 2], [(0, 1, False), (1, 1, False), (2, 2, False), (3, 0, True)])
    mean = _mean_over_iterations(obs)
    assert list(mean["rank"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(mean["compute_s"], [2.0, 12.0, 22.0, 32.0])
    np.testing.assert_allclose(mean["pull_s"], [0.2, 1.2, 2.2, 3.2])
    np.testing.assert_allclose(mean["push_s"], [0.4, 1.4, 2.4, 3.4])
    np.testing.assert_allclose(mean["aggregate_s"], [0.0, 0.0, 0.0, 0.01])
    per_it = _stack([(servers, workers, obs)], 3)
    assert per_it[0].shape == (3, 3) and per_it[6] is None
    # node 1's compute sums its two ranks; pulls and pushes take the slowest rank's
    np.testing.assert_allclose(per_it[2][0], [31.0, 1.0 + 11.0, 21.0])
    np.testing.assert_allclose(per_it[4][0], [3.1, 1.1, 2.1])
    np.testing.assert_allclose(per_it[5][1], [3.4, 1.4, 2.4])
    np.testing.assert_allclose(per_it[3][2], [0.02, 0.0, 0.0])
    per_trial = _stack([(servers, workers, obs)], 3, max_rows=2)        # 3 iterations > 2 rows: averaged
    assert per_trial[0].shape == (1, 3)
    np.testing.assert_allclose(per_trial[2][0], [32.0, 2.0 + 12.0, 22.0])
    np.testing.assert_allclose(per_trial[4][0], [3.2, 1.2, 2.2])
    # more trials than rows: the newest kept
    many = _stack([(servers, workers, _obs([k], [(0, 1, False), (3, 0, True)])) for k in range(4)], 3, max_rows=3)
    assert many[2].shape == (3, 3)
    np.testing.assert_allclose(many[2][:, 1], [2.0, 3.0, 4.0])
    assert _stack([(servers, workers, None), (servers, workers, _obs([], []))], 3) is None
    one = _stack([(servers, workers, _obs([0], [(3, 0, True)]))], 3)      # a single row is a row
    assert one[0].shape == (1, 3) and one[2][0].tolist() == [31.0, 0.0, 0.0]
    pb = np.array([0.0, 5.0, 5.0])
    given = _stack([(servers, workers, obs, pb)], 3)
    np.testing.assert_array_equal(given[6], [pb, pb, pb])
    import pytest
    with pytest.raises(ValueError, match=r"^give push bytes for every trial or for none$"):
        _stack([(servers, workers, obs, pb), (servers, workers, obs)], 3)


@pytest.mark.parametrize("n_nodes, rows", [(3, 10), (1000, 1)])
def test_the_network_fit_composes_a_row_per_trial_on_a_big_cluster(monkeypatch, n_nodes, rows):
    """Ten iterations of one trial: ten rows on 3 nodes; on 1000 nodes at most max(8, 2e6 / N^2) = 8
    rows fit, so the trial's times are averaged into one."""
    import hpcps.tune.models.network as network
    from hpcps.cluster import Cluster, Node, NodeType
    nt = NodeType("t", 1.0, 2, 10.0)
    model = network.NetworkModel(Cluster("c", (nt,), tuple(Node(f"n{i}", nt) for i in range(n_nodes))))
    servers, workers = np.zeros(n_nodes, bool), np.zeros(n_nodes, bool)
    servers[0], workers[1:3] = True, True
    seen = []

    class Composed(Exception):
        pass

    def composed(s, w, *args, **kw):
        seen.append(s.shape)
        raise Composed
    monkeypatch.setattr(network, "iteration_times", composed)
    with pytest.raises(Composed):
        model.fit([(servers, workers, _obs(range(10), [(0, 1, False), (1, 2, False), (2, 0, True)]))], 1e6)
    assert seen == [(rows, n_nodes)]


def _tiny_model(n_samples=4):
    from hpcps.cluster import NodeType
    from tests.unit.test_tune_models import tiny_problem
    st = NodeType("st", 2.0, 2, 10.0, latency_us=30.0)
    wt = NodeType("wt", 1.0, 2, 4.0, latency_us=40.0)
    return StructuredModel(tiny_problem(st, [wt, wt]), n_samples=n_samples, seed=0)


def test_moments_of_a_log_normal_correction_on_the_samples(monkeypatch):
    import math

    from hpcps.tune.models.structured import INFEASIBLE_LOG_S, INFEASIBLE_S, MIN_VARIANCE_LOG, MIN_VARIANCE_S2
    model = _tiny_model()
    it = np.array([[1.0, 2.0, np.inf, 4.0], [3.0, 2.0, np.inf, 4.0]])          # (samples 2, points 4)
    feats = np.zeros((4, 3))
    monkeypatch.setattr(model, "_compose", lambda X, samples, noisy=True: (it, feats))
    model._corr, model._corr_mean, model._corr_sd = None, 0.1, 0.2
    mean, var = model._moments(np.zeros((4, model.space.n_dims)))
    m1 = np.array([2.0, 2.0, 4.0])                  # points 0, 1 and 3
    m2 = np.array([5.0, 4.0, 16.0])
    want_mean = m1 * math.exp(0.1 + 0.02)
    want_var = m2 * math.exp(0.2 + 0.08) - want_mean ** 2
    np.testing.assert_allclose(mean[[0, 1, 3]], want_mean, rtol=1e-12)
    np.testing.assert_allclose(var[[0, 1, 3]], want_var, rtol=1e-12)
    assert mean[2] == INFEASIBLE_S and var[2] == MIN_VARIANCE_S2
    lmean, lvar = model._log_moments(np.zeros((4, model.space.n_dims)))
    logs = np.log(it[:, [0, 1, 3]])
    np.testing.assert_allclose(lmean[[0, 1, 3]], logs.mean(0) + 0.1, rtol=1e-12)
    np.testing.assert_allclose(lvar[[0, 1, 3]], logs.var(0) + 0.04, rtol=1e-12)
    assert lmean[2] == INFEASIBLE_LOG_S and lvar[2] == MIN_VARIANCE_LOG
    # predict goes through the same moments, as (n, 1) columns
    pm, pv = model.predict(np.zeros((4, model.space.n_dims)))
    np.testing.assert_array_equal(pm[:, 0], mean)
    np.testing.assert_array_equal(pv[:, 0], var)
    plm, plv = model.predict_log(np.zeros((4, model.space.n_dims)))
    np.testing.assert_array_equal(plm[:, 0], lmean)
    np.testing.assert_array_equal(plv[:, 0], np.maximum(lvar, MIN_VARIANCE_LOG))
    # no spread at all still reads as the floor, never as none
    it[:] = 2.0
    model._corr_sd = 0.0
    _, var = model._moments(np.zeros((4, model.space.n_dims)))
    np.testing.assert_array_equal(var, np.full(4, MIN_VARIANCE_S2))


def test_the_correction_gp_moves_finite_candidates_only():
    from hpcps.tune.models.structured import PRIOR_CORRECTION_SD
    model = _tiny_model()

    class GP:
        def predict(self, X, return_std=False):
            assert return_std
            return X[:, 0] * 0.5, np.full(len(X), 0.07)
    model._corr, model._corr_mean = GP(), 0.2
    feats = np.array([[1.0, 0.5, 0.5], [np.inf, 0.5, 0.5], [2.0, 0.0, 1.0]])
    mu, sd = model._correction(feats)
    np.testing.assert_allclose(mu, [0.7, 0.2, 1.2])
    np.testing.assert_allclose(sd, [0.07, PRIOR_CORRECTION_SD, 0.07])
    model._corr, model._corr_mean, model._corr_sd = None, -0.1, 0.3
    mu, sd = model._correction(feats)
    np.testing.assert_allclose(mu, [-0.1] * 3)
    np.testing.assert_allclose(sd, [0.3] * 3)


def test_a_trials_time_averages_the_median_count_of_iterations_its_trials_observed():
    """What the spread of a predicted trial shrinks by: the median number of iterations the trials
    observed (here 3, 5 and 20 iterations: 5), and 1 without trials."""
    from tests.unit.test_tune_models import point
    model = _tiny_model()
    x = point((1, 0, 0.0, 1), (0, 1, 0.5, 1), (0, 1, 0.5, 1))
    ranks = [(0, 0, True), (1, 1, False), (2, 2, False)]
    model.set_observations([(x, _obs(range(n), ranks)) for n in (3, 20, 5)] + [(x, None)])
    model.set_data(np.stack([x] * 3), np.ones((3, 1)))
    model.optimize()
    assert model.iterations == 5


def test_noisy_steps_add_the_mean_excess_and_a_spread_shrunk_by_the_iterations(monkeypatch):
    import math
    model = _tiny_model(n_samples=4)
    model.optimize()
    model.machine.noise_sd = 0.2
    model._iterations = 4
    N = len(model.problem.cluster)
    comp = np.full((4, 1, N), 1.0)
    monkeypatch.setattr(model, "_node_times", lambda d, samples: (comp[:samples], None, None, None))
    # the composition stand-in: the slowest node's step
    monkeypatch.setattr(model, "_global_batch_times", lambda d, c, bw, lat, agg: c.max(-1))
    noise = np.array([[-1.0, 0.5, 2.0], [0.0, -0.5, 1.0], [1.0, 1.0, -2.0], [0.3, 0.2, 0.1]])[:, None, :]
    model._noise = noise
    from tests.unit.test_tune_models import point
    x = point((1, 0, 0.0, 1), (0, 1, 0.5, 1), (0, 1, 0.5, 1))
    it, _ = model._compose(x[None], samples=4)
    sigma = 0.2
    excess = np.exp(sigma * noise - sigma ** 2 / 2).max(-1) - 1.0                 # (4, 1)
    mean_excess = excess.mean(0, keepdims=True)
    want = 1.0 + mean_excess + (excess - mean_excess) / math.sqrt(4)
    np.testing.assert_allclose(it, want, rtol=1e-12)
    # one sample, or noiseless: the composition as it is
    np.testing.assert_allclose(model._compose(x[None], samples=1)[0], [[1.0]])
    np.testing.assert_allclose(model._compose(x[None], samples=4, noisy=False)[0], np.ones((4, 1)))
    two, _ = model._compose(x[None], samples=2)
    e2 = excess[:2] - excess[:2].mean(0)
    np.testing.assert_allclose(two, 1.0 + excess[:2].mean(0) + e2 / 2, rtol=1e-12)
    model.machine.noise_sd = 0.0
    np.testing.assert_allclose(model._compose(x[None], samples=4)[0], np.ones((4, 1)))


@pytest.mark.parametrize("pull", ["none", "bf16"])
def test_codec_costs_node_by_node(slownet, pull):
    from dataclasses import replace

    from hpcps.tune.models.codecs import CodecModel
    from hpcps.tune.problem import problem_for
    cluster, job, profiles, problem = slownet
    if pull != "none":
        job = replace(job, exchange=replace(job.exchange, pull_codec=pull))
        costs = profiles.machine.codec_s_per_element + ((pull, (1e-9, 2e-9)),)
        profiles = replace(profiles, machine=replace(profiles.machine, codec_s_per_element=costs))
        problem = problem_for(cluster, job, profiles, codecs=("sign", "int8"))
    cm = CodecModel(problem)
    assert cm.active and cm.has_costs
    np.testing.assert_array_equal(cm.encode, [0.0, 2e-8, 3e-8])
    np.testing.assert_array_equal(cm.decode, [0.0, 4e-9, 6e-9])
    assert (cm.pull_encode > 0 and cm.pull_decode > 0) == (pull != "none")
    speed = [n.type.speed for n in problem.cluster.nodes]
    for codecs, servers in (([0, 1, 1, 2, 2], (0, 1)), ([2] * 5, (0, 1, 2, 3, 4)), ([1] * 5, (3,))):
        d = decode_many(problem.space, spread(problem, codecs, servers)[None])
        m = int(d.servers[0].sum())
        shard_values = problem.params / m
        remote = cm.remote_values(d)[0]
        enc, dec = cm.encode_s(d)[0], cm.decode_s(d)[0]
        push = cm.push_bytes(d)[0]
        for i in range(len(speed)):
            works, serves, k = bool(d.workers[0, i]), bool(d.servers[0, i]), int(d.codecs[0, i])
            # a worker sends its slice to every server on another node
            assert remote[i] == (problem.params * (m - serves) / m if works else 0.0)
            want_enc = (cm.encode[k] * remote[i] + cm.pull_decode * problem.params) / speed[i] if works else 0.0
            assert enc[i] == pytest.approx(want_enc, rel=1e-12)
            others = sum(cm.decode[int(d.codecs[0, j])] for j in range(len(speed))
                         if d.workers[0, j] and j != i)
            want_dec = (others + cm.pull_encode) * shard_values / speed[i] if serves else 0.0
            assert dec[i] == pytest.approx(want_dec, rel=1e-12)
            assert push[i] == problem.push_slice_bytes(k, m)


def test_the_aggregate_model_fits_bytes_times_workers_bytes_and_a_fixed_part():
    from hpcps.tune.models.structured import AggregateModel
    model = _tiny_model()
    agg = AggregateModel(model.problem.cluster)
    np.testing.assert_array_equal(agg.coef, [1.5e-10, 5e-11, 0.0])
    speed = agg.speed                                          # st 2.0, wt 1.0, wt 1.0
    np.testing.assert_array_equal(speed, [2.0, 1.0, 1.0])
    got = agg.predict(np.array([1e6, 4e6]), np.array([2.0, 3.0]))
    np.testing.assert_allclose(got, [[1e6 * (1.5e-10 * 2 + 5e-11) / s for s in speed],
                                     [4e6 * (1.5e-10 * 3 + 5e-11) / s for s in speed]], rtol=1e-12)
    shapes = ((1e6, 1, 0), (2e6, 3, 1), (5e5, 2, 2), (3e6, 4, 0), (2.5e5, 1, 1))
    for alpha, beta, gamma in ((3e-10, 2e-11, 0.0), (3e-10, 2e-11, 7.5e-4), (0.0, 0.0, 7.5e-4)):
        rows = [(b, w, node, (b * (alpha * w + beta) + gamma) / speed[node]) for b, w, node in shapes]
        agg.fit(rows)
        # alpha and beta as tightly as before the fixed part; a zero within a millionth of its scale
        np.testing.assert_allclose(agg.coef[:2], [alpha, beta], rtol=1e-9, atol=1e-25)
        np.testing.assert_allclose(agg.coef[2], gamma, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(agg.predict(np.array([1e5]), np.array([2.0]))[0],
                                   [(1e5 * (alpha * 2 + beta) + gamma) / s for s in speed], rtol=1e-9)
    fitted = agg.coef.copy()
    agg.fit(rows[:1])                                          # one row pins nothing: kept
    np.testing.assert_array_equal(agg.coef, fitted)
    agg.fit([(1e6, 1, 0, 0.0), (2e6, 2, 1, 0.0)])             # all zero: no fit
    np.testing.assert_array_equal(agg.coef, fitted)


def test_asp_trials_are_left_out_of_the_update_fit_and_the_ones_after_them_are_not():
    """Servers' updates as in test_the_update_cost_is_fitted_to_the_servers_observed_updates, with an asp
    trial first whose server applies pushes one at a time (its aggregate_s, 1 s, is no round's
    aggregation): the fit takes the bsp trials after it, and pins alpha and beta as without it."""
    from hpcps.cluster import Cluster, Node, NodeType
    from hpcps.tune.problem import Problem
    from hpcps.tune.space import ScheduleSpace
    st, wt = NodeType("st", 2.0, 2, 10.0), NodeType("wt", 1.0, 2, 4.0)
    cl = Cluster("tiny", (st, wt), (Node("s", st), Node("w0", wt), Node("w1", wt)))
    problem = Problem(cl, 8, 2 ** 20, ScheduleSpace(cl, 8, None, syncs=("bsp", "asp")))
    model = StructuredModel(problem, seed=0)
    alpha, beta = 4e-10, 3e-10
    trials = []
    for layout, sync in ((((1, 0, 0, 1), (0, 1, 0.5, 1), (0, 1, 0.5, 1)), 1),
                         (((1, 0, 0, 1), (0, 1, 1.0, 1), (0, 0, 0, 1)), 0),
                         (((1, 0, 0, 1), (0, 1, 0.5, 1), (0, 1, 0.5, 1)), 0),
                         (((1, 0, 0, 1), (1, 1, 0.5, 1), (0, 1, 0.5, 1)), 0)):
        p = np.append(np.array(layout, dtype=float).reshape(-1), sync)
        d = decode_many(problem.space, p[None])
        assert problem.syncs[int(d.syncs[0])] == ("asp" if sync else "bsp")
        trials.append((p, update_rows(problem, d, alpha, beta, update_s=1.0 if sync else None)))
    model.set_observations(trials)
    model.optimize()
    np.testing.assert_allclose(model.aggregate.coef[:2], [alpha, beta], rtol=1e-6)
    assert abs(model.aggregate.coef[2]) < 1e-12       # no fixed part in these updates (they are ~1e-4 s)


def test_data_checks_and_the_log_view():
    from hpcps.tune.models.structured import LogTime, _joined
    model = _tiny_model()
    n = model.space.n_dims
    assert model.X.shape == (0, n) and model.Y.shape == (0, 1)     # no data yet
    with pytest.raises(ValueError, match=rf"^X must be \(n_points, {n}\) and Y \(n_points, 1\); "
                                         rf"got \(2, {n}\) and \(3, 1\)$"):
        model.set_data(np.zeros((2, n)), np.ones(3))
    with pytest.raises(ValueError, match=r"^X must be"):
        model.set_data(np.zeros((2, n + 1)), np.ones(2))
    model.set_data(np.zeros(n), [2.5])                        # one point as a row
    assert model.X.shape == (1, n) and model.Y.tolist() == [[2.5]]
    log = LogTime(model)
    log.set_data(np.zeros((2, n)), np.log([[2.0], [8.0]]))
    np.testing.assert_allclose(model.Y, [[2.0], [8.0]])
    np.testing.assert_allclose(log.Y, np.log([[2.0], [8.0]]))
    assert log.X is model.X
    model.set_observations([(np.zeros(n), None), (np.ones(n), np.zeros(0)), (np.ones(n), np.zeros(3))])
    assert len(model._trials) == 1 and model._trials[0][0].dtype == float
    model.set_observations([([1] * n, np.zeros(3))])               # a point given as integers
    assert model._trials[0][0].dtype == float and model._trials[0][0].tolist() == [1.0] * n
    assert _joined([]).shape == (0,)
    np.testing.assert_array_equal(_joined([np.array([1.0]), np.array([2.0, 3.0])]), [1.0, 2.0, 3.0])


def test_candidates_are_scored_in_chunks_of_the_cells_they_fill():
    from hpcps.tune.models.structured import CHUNK_ELEMENTS
    model = _tiny_model()
    N = len(model.problem.cluster)
    X = np.arange(3000.0)[:, None]
    sizes = [len(c) for c in model._by_chunk(X, 16, lambda c: c)]
    step = int(max(4, min(1024, CHUNK_ELEMENTS / (16 * N * N))))
    assert sizes == [step] * (3000 // step) + ([3000 % step] if 3000 % step else [])
    assert step == 1024                                         # 3 nodes: the cap
    assert [c.shape for c in model._by_chunk(np.arange(10.0), 1, lambda c: c)] == [(1, 10)]   # one point
    assert [len(c) for c in model._by_chunk(np.zeros((10, 1)), 10 ** 6, lambda c: c)] == [4, 4, 2]   # the floor
    assert model._by_chunk(np.zeros((0, 1)), 16, len) == []


def test_optimize_without_trials_draws_stratified_noise_around_the_priors():
    from scipy.stats import norm

    from hpcps.tune.models.structured import PRIOR_CORRECTION_SD
    model = _tiny_model(n_samples=8)
    model.optimize()
    th_m, th_n, z = model._draws
    assert th_m.shape == (8, len(model.machine.theta)) and th_n.shape == (8, len(model.network.theta))
    np.testing.assert_array_equal(th_m[0], model.machine.prior_mean)     # the first draw is the fit
    np.testing.assert_array_equal(th_n[0], model.network.prior_mean)
    assert z.shape == (8,) and z[0] == 0.0 and np.count_nonzero(z) == 7
    N = len(model.problem.cluster)
    assert model._noise.shape == (8, 1, N)
    for node in range(N):                                    # each node: one draw per stratum
        assert sorted(np.floor(norm.cdf(model._noise[:, 0, node]) * 8).astype(int)) == list(range(8))
    assert model.iterations == 1
    assert model._corr is None and model._corr_mean == 0.0 and model._corr_sd == PRIOR_CORRECTION_SD
    again = _tiny_model(n_samples=8)
    again.optimize()
    np.testing.assert_array_equal(again._noise, model._noise)             # seeded


def test_codec_costs_come_off_the_observed_steps_and_updates(slownet):
    _cluster, _job, _profiles, problem = slownet
    model = StructuredModel(problem)
    d = decode_many(problem.space, spread(problem, [1, 1, 2, 2, 1], (0, 1))[None])
    enc, dec = model.codecs.encode_s(d)[0], model.codecs.decode_s(d)[0]
    obs = _obs([0], [(0, 0, True), (1, 1, True), (2, 2, False), (3, 3, False)])
    obs["compute_s"] = [1.0, 1e-9, 2.0, 3.0]
    obs["aggregate_s"] = [0.5, 0.25, 0.0, 0.0]
    out = model._less_codec_costs(d, obs)
    assert out is not obs
    assert out["compute_s"][0] == pytest.approx(1.0 - enc[0])
    assert out["compute_s"][1] == pytest.approx(0.05e-9)          # kept positive: 5% of what was measured
    np.testing.assert_allclose(out["compute_s"][2:], [2.0 - enc[2], 3.0 - enc[3]])
    np.testing.assert_allclose(out["aggregate_s"], [0.5 - dec[0], 0.25 - dec[1], 0.0, 0.0])
    assert (enc[1:4] > 0).all() and (dec[:2] > 0).all()
    np.testing.assert_array_equal(obs["compute_s"], [1.0, 1e-9, 2.0, 3.0])     # the input untouched


def test_stale_candidates_are_composed_with_their_codecs_push_bytes(slownet, monkeypatch):
    from hpcps.tune.models import structured
    from hpcps.tune.problem import problem_for
    cluster, job, profiles, plain = slownet
    problem = problem_for(cluster, job, profiles, codecs=("sign", "int8"), syncs=("asp", "ssp1"))
    space = problem.space
    assert space.syncs == ("bsp", "ssp1", "asp")
    model = StructuredModel(problem)
    model.optimize()
    seen = []
    real = structured.stale_iteration_times

    def capture(mode, staleness, servers, workers, *args):
        seen.append((mode, staleness, servers.copy(), args[-1]))
        return real(mode, staleness, servers, workers, *args)
    monkeypatch.setattr(structured, "stale_iteration_times", capture)
    schedule = plain.space.decode(spread(plain, [1, 1, 2, 2, 1], (0, 1)))
    X = np.array([space.encode(schedule, s) for s in space.syncs])
    d = decode_many(space, X)
    comp, bw, lat, agg = model._node_times(d, samples=1)
    it = model._global_batch_times(d, comp, bw, lat, agg)
    assert [(m, s) for m, s, _, _ in seen] == [("ssp", 1), ("asp", 0)]
    push = model.codecs.push_bytes(d)
    for k, (_, _, servers, pb) in enumerate(seen):
        np.testing.assert_array_equal(pb, push[[k + 1]])
        np.testing.assert_array_equal(servers, d.servers[[k + 1]])
    assert it.shape == (1, 3) and len(set(it[0])) == 3


def test_codec_model_is_active_with_any_codec_or_cost(slownet):
    from dataclasses import replace

    from hpcps.tune.models.codecs import CodecModel
    from hpcps.tune.problem import problem_for
    cluster, job, profiles, _ = slownet
    none = replace(profiles, machine=replace(profiles.machine, codec_s_per_element=()))
    plain = CodecModel(problem_for(cluster, job, none))
    assert plain.problem.codecs == ("none",)
    assert not plain.has_costs and not plain.active
    assert plain.push_bytes(decode_many(plain.problem.space, spread(plain.problem, [0] * 5)[None])) is None
    free = CodecModel(problem_for(cluster, job, none, codecs=("int8",)))
    assert not free.has_costs and free.active                 # int8's bytes differ though it costs nothing
    enc_only = replace(profiles, machine=replace(profiles.machine, codec_s_per_element=(("int8", (2e-8, 0.0)),)))
    cm = CodecModel(problem_for(cluster, job, enc_only, codecs=("int8",)))
    assert cm.has_costs and cm.active and not cm.decode.any()


def test_summary_features_and_float_times():
    model = _tiny_model()
    from tests.unit.test_tune_models import point
    x = point((1, 0, 0.0, 1), (0, 1, 0.5, 1), (1, 1, 0.5, 1))
    d = decode_many(model.space, x[None])
    f = model._summary(d, np.array([2.0]))
    np.testing.assert_allclose(f, [[np.log(2.0), 2 / 3, 2 / 3]])
    np.testing.assert_allclose(model._summary(d, np.array([0.0]))[0, 0], np.log(1e-9))
    model.set_data(x[None], [[3]])
    assert model.Y.dtype == float and model.Y.tolist() == [[3.0]]


def test_the_sync_feature_spans_zero_to_one_whatever_the_number_of_syncs():
    """With syncs to choose, the correction's features end with the candidate's sync as a fraction of
    the choices: 0 for the job's own, 1 for the last (here bsp, ssp1, asp: 0, 1/2, 1)."""
    from dataclasses import replace

    from hpcps.tune.space import ScheduleSpace
    plain = _tiny_model().problem
    space = ScheduleSpace(plain.cluster, plain.global_batch, None, syncs=("bsp", "ssp1", "asp"))
    model = StructuredModel(replace(plain, space=space), n_samples=4, seed=0)
    from tests.unit.test_tune_models import point
    base = point((1, 0, 0.0, 1), (0, 1, 0.5, 1), (1, 1, 0.5, 1))
    X = np.stack([np.append(base, k) for k in range(3)])
    d = decode_many(space, X)
    np.testing.assert_allclose(model._summary(d, np.ones(3))[:, -1], [0.0, 0.5, 1.0])


def test_ssp_with_staleness_0_is_modelled_as_bsp():
    """A job under ssp with staleness 0 names its synchronisation ssp0 in the space: the structured
    model takes it, and predicts it as the bsp timeline it runs."""
    from hpcps.cluster import Cluster, Node, NodeType
    from hpcps.tune.problem import Problem
    from hpcps.tune.space import ScheduleSpace
    st, wt = NodeType("st", 2.0, 2, 10.0), NodeType("wt", 1.0, 2, 4.0)
    cl = Cluster("tiny", (st, wt), (Node("s", st), Node("w0", wt), Node("w1", wt)))
    p = np.array([[1, 0, 0, 1], [0, 1, 0.5, 1], [0, 1, 0.5, 1]], dtype=float).reshape(1, -1)
    means = {}
    for sync in ("bsp", "ssp0"):
        model = StructuredModel(Problem(cl, 8, 2 ** 20, ScheduleSpace(cl, 8, None, syncs=(sync,))), seed=0)
        means[sync] = model.predict_mean(p)
    np.testing.assert_array_equal(means["ssp0"], means["bsp"])


def test_the_machine_model_fits_a_correction_per_node_type_with_enough_settings():
    """Six settings (batches) of one node type, their times off the parametric form by a pattern it
    cannot follow: a residual GP is fitted for that type, and none for a type with fewer settings."""
    from hpcps.cluster import Cluster, Node, NodeType
    from hpcps.tune.models.machine import MIN_GP_ROWS, MachineModel
    from hpcps.tune.observations import empty
    a, b = NodeType("a", 1.0, 4, 1.0), NodeType("b", 1.0, 4, 1.0)
    model = MachineModel(Cluster("c", (a, b), (Node("a0", a), Node("b0", b))))
    batches = [1, 2, 4, 8, 16, 32]
    assert len(batches) == MIN_GP_ROWS
    obs = empty(len(batches) + 2)
    obs["type"] = [0] * len(batches) + [1, 1]
    obs["batch"] = batches + [4, 8]
    obs["threads"] = obs["node_threads"] = 1
    obs["compute_s"] = [1e-3 * k * (1.5 if i % 2 else 0.7) for i, k in enumerate(batches)] + [4e-3, 8e-3]
    model.fit(obs)
    assert sorted(model.gps) == [0] and sorted(model.gp_sd) == [0] and model.gp_sd[0] > 0


def test_the_network_is_fitted_to_each_trial_s_encoded_push_sizes(monkeypatch, slownet):
    """A bsp trial whose workers push int8 reaches the network fit with those workers' encoded push
    bytes (a quarter of float32's), as hpcps.ps.plan sizes them; one pushing float32 with float32's."""
    cluster, job, profiles, problem = slownet
    model = StructuredModel(problem, seed=0)
    seen = []

    class Fitted(Exception):
        pass

    def fit(trials, *args, **kw):
        seen.extend(trials)
        raise Fitted
    monkeypatch.setattr(model.network, "fit", fit)
    ranks = [(r, r, r == 0) for r in range(5)]
    model.set_observations([(spread(problem, [1] * 5, servers=(0,)), _obs([0, 1], ranks)),
                            (spread(problem, [0] * 5, servers=(0,)), _obs([0, 1], ranks))])
    with pytest.raises(Fitted):
        model.optimize()
    assert [len(t) for t in seen] == [4, 4]
    int8, none = seen[0][3], seen[1][3]
    workers = seen[0][1]
    assert workers.tolist() == [False, True, True, True, True]
    np.testing.assert_allclose(none[workers], problem.model_bytes, rtol=1e-12)
    assert np.all(int8[workers] < none[workers] / 3.9)
