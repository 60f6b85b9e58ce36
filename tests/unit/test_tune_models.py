"""The structured model's parts: known constants recovered from synthetic observations, the composition
against the simulator, and the Emukit IModel surface."""

from pathlib import Path

import numpy as np
import pytest

from hpcps.cluster import load_cluster
from hpcps.cluster.placement import balanced, naive
from hpcps.config import load_job
from hpcps.tune import observations as obs_io
from hpcps.tune.models.machine import MachineModel
from hpcps.tune.models.network import NetworkModel, iteration_times
from hpcps.tune.models.structured import LogTime, StructuredModel
from hpcps.tune.problem import problem_for
from hpcps.tune.space import decode_many

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hetero10a():
    return load_cluster(ROOT / "jobs/clusters/hetero10a.toml")


@pytest.fixture(scope="module")
def problem(hetero10a):
    return problem_for(hetero10a, load_job(ROOT / "jobs/cifar.toml"))


def run_trials(backend, space, points):
    """Each point run as a trial of backend (its own sync where the space has one): (X, Y, [(point,
    observations)]), what StructuredModel.set_data and set_observations take."""
    X, Y, obs = [], [], []
    for i, p in enumerate(points):
        sync = {"sync": space.sync_of(p)} if len(space.syncs) > 1 else {}
        r = backend.run_trial(None, space.decode(p), i + 1, **sync)
        X.append(p)
        Y.append([r.iteration_time_s])
        obs.append((p, r.observations))
    return np.array(X), np.array(Y), obs


def fitted_model(problem, X, Y, obs):
    model = StructuredModel(problem, seed=0)
    model.set_data(X, Y)
    model.set_observations(obs)
    model.optimize()
    return model


def _theta_for(model: MachineModel, true: dict) -> np.ndarray:
    """The parameter vector of given per-type constants (global a, b at speed 1 taken as type 0's)."""
    J = len(model.types)
    th = np.zeros(2 + 6 * J)
    th[0] = np.log(true["a"][0] * model.speed[0])
    th[1] = np.log(true["b"][0] * model.speed[0])
    for j in range(J):
        base = 2 + 6 * j
        th[base + 0] = np.log(true["c0"][j])
        th[base + 1] = np.log(true["a"][j] * model.speed[j]) - th[0]
        th[base + 2] = np.log(true["b"][j] * model.speed[j]) - th[1]
        th[base + 3] = np.log(true["qa"][j] / (1 - true["qa"][j]))
        th[base + 4] = np.log(true["qb"][j] / (1 - true["qb"][j]))
        th[base + 5] = np.log(true["o"][j])
    return th


def test_machine_model_recovers_known_constants(hetero10a):
    model = MachineModel(hetero10a)
    true = {"c0": np.array([3e-3, 2e-3, 2e-4]), "a": np.array([5e-4, 1e-3, 4e-3]),
            "b": np.array([4e-4, 9e-4, 3.5e-3]), "qa": np.array([0.3, 0.4, 0.2]),
            "qb": np.array([0.8, 0.7, 0.6]), "o": np.array([0.5, 0.4, 0.6])}
    theta = _theta_for(model, true)
    rng = np.random.default_rng(0)
    rows = []
    for j, t in enumerate(hetero10a.types):
        for k in (1, 2, 4, 8, 16, 32):
            for threads in range(1, 2 * t.cores + 1):
                clean = model.form(theta, j, k, threads, threads)[0]
                for it in range(5):
                    rows.append((it, 0, 0, j, k, threads, threads, False,
                                 clean * rng.lognormal(0, 0.02), 0.0, 0.0, 0.0))
    obs = np.array(rows, dtype=obs_io.OBS_DTYPE)
    model.fit(obs)
    got = {k: v[0] for k, v in model.constants(model.theta).items()}
    for name in ("a", "b", "qb", "o"):
        np.testing.assert_allclose(got[name], true[name], rtol=0.25, err_msg=name)
    # The unthreaded fixed cost stands apart from the threaded one where it is a large part of a step;
    # on the slow type (0.2 ms of 4 ms) only their sum is pinned down.
    np.testing.assert_allclose(got["c0"][:2], true["c0"][:2], rtol=0.25)
    np.testing.assert_allclose(got["c0"] + got["a"], true["c0"] + true["a"], rtol=0.1)
    assert abs(model.noise_sd - 0.02) < 0.005
    # Predictions at unseen settings (within the range) are within a few percent.
    pred = model.predict(model.theta[None], np.array([0, 1, 2]), 12, 3, 3)[0]
    clean = model.form(theta, np.array([0, 1, 2]), 12, 3, 3)[0]
    np.testing.assert_allclose(pred, clean, rtol=0.05)


def test_oversubscribed_steps_start_from_the_workloads_calibrated_thread_scaling(hetero10a):
    """Steps charged as the emulation and the testbed charge them (the calibrated profile's thread model
    over the node's speed), observed only with at most as many threads as cores, as a tuner's first
    trials are: a step with twice the threads of its node's cores is predicted within 15% given the
    calibration's thread scaling as the prior, and at well under two thirds of its time without."""
    from hpcps.sim import load_profiles, profile_for_job
    job = load_job(ROOT / "jobs/cifar.toml")
    profile = profile_for_job(load_profiles(), job.workload, job.model, job.data)
    problem = problem_for(hetero10a, job)
    assert problem.thread_scaling == (profile.fixed_parallel, profile.per_sample_parallel, profile.oversubscription)
    rows = []
    for j, t in enumerate(hetero10a.types):
        for k in (1, 4, 16, 32):
            for threads in range(1, t.cores + 1):
                step = profile.step_time(k, threads, t.cores, threads) / t.speed
                rows += [(it, 0, 0, j, k, threads, threads, False, step, 0.0, 0.0, 0.0) for it in range(3)]
    obs = np.array(rows, dtype=obs_io.OBS_DTYPE)
    k = 16
    cores = np.array([t.cores for t in hetero10a.types])
    truth = np.array([profile.step_time(k, 2 * c, c, 2 * c) / t.speed for c, t in zip(cores, hetero10a.types)])
    ratios = {}
    for label, prior in (("calibrated", problem.thread_scaling), ("uninformed", None)):
        model = MachineModel(hetero10a, prior)
        model.fit(obs)
        pred = model.predict(model.theta[None], np.arange(len(cores)), k, 2 * cores, 2 * cores)[0]
        ratios[label] = pred / truth
    np.testing.assert_allclose(ratios["calibrated"], 1.0, rtol=0.15)
    assert np.all(ratios["uninformed"] < 2 / 3)
    # the structured model's machine model starts there
    np.testing.assert_array_equal(StructuredModel(problem).machine.prior_mean,
                                  MachineModel(hetero10a, problem.thread_scaling).prior_mean)


def test_an_unseen_node_type_gets_the_seen_types_scaled_by_speed(hetero10a):
    model = MachineModel(hetero10a)
    # Only type 0 (speed 4) is observed: per-sample 1 ms at speed 1 -> 0.25 ms there.
    rows = [(0, 0, 0, 0, k, 1, 1, False, 3e-3 + 2.5e-4 * k, 0, 0, 0) for k in (1, 4, 16, 64) for _ in range(3)]
    model.fit(np.array(rows, dtype=obs_io.OBS_DTYPE))
    b = model.constants(model.theta)["b"][0]
    speeds = np.array([t.speed for t in hetero10a.types])
    np.testing.assert_allclose(b[1:] * speeds[1:], b[0] * speeds[0], rtol=0.1)


def test_network_model_recovers_bandwidth_and_latency(hetero10a, problem):
    """Pull and push windows made by the composition itself with known constants (the steady state's, as
    the fit reads traces) are fitted back."""
    net = NetworkModel(hetero10a)
    J = len(hetero10a.types)
    true_bw = np.array([0.6, 0.9, 0.5]) * np.array([t.nic_bytes_per_s for t in hetero10a.types])
    true_lat = np.array([40e-6, 30e-6, 300e-6])
    theta = np.concatenate([np.log(true_bw), np.log(true_lat)])
    bw, lat = net.node_params(theta)
    rng = np.random.default_rng(1)
    trials = []
    for p in problem.space.random_points(12, rng):
        p = problem.space.repair(p)
        d = decode_many(problem.space, p[None])
        compute = np.where(d.workers, 0.01 + 0.002 * d.batches, 0.0)[None]
        ex = iteration_times(d.servers, d.workers, compute, bw, lat, np.zeros_like(compute),
                             problem.model_bytes, detail=True)
        rows = []
        for i in range(len(hetero10a)):
            if d.workers[0, i] or d.servers[0, i]:
                rows.append((0, i, i, net.node_type[i], int(round(d.batches[0, i])), 1, 1, bool(d.servers[0, i]),
                             compute[0, 0, i], ex.pull_steady[0, 0, i], ex.push[0, 0, i], 0.0))
        trials.append((d.servers[0], d.workers[0], np.array(rows, dtype=obs_io.OBS_DTYPE)))
    net.fit(trials, problem.model_bytes)
    got_bw = np.exp(net.theta[:J])
    # cpu-slow's 1 Gb/s link is the bottleneck of almost every exchange: it is pinned down.
    assert got_bw[2] == pytest.approx(true_bw[2], rel=0.05)
    assert np.exp(net.theta[J + 2]) == pytest.approx(true_lat[2], rel=0.3)


def test_the_network_fit_reads_no_window_of_a_node_that_serves(hetero10a, problem):
    """A rank that serves moves its shard's slices in the background: its trace windows hold only its
    own worker's local copies (near nothing on the testbed). Such windows leave the fit as it was."""
    true = np.log(np.array([t.nic_bytes_per_s for t in hetero10a.types]) * 0.7)
    theta = np.concatenate([true, np.log([30e-6, 30e-6, 200e-6])])
    net = NetworkModel(hetero10a)
    bw, lat = net.node_params(theta)
    trials, blanked = [], []
    for p in problem.space.random_points(8, np.random.default_rng(4)):
        d = decode_many(problem.space, problem.space.repair(p)[None])
        compute = np.where(d.workers, 0.01 + 0.002 * d.batches, 0.0)[None]
        ex = iteration_times(d.servers, d.workers, compute, bw, lat, np.zeros_like(compute), problem.model_bytes,
                             detail=True)
        rows = [(0, i, i, net.node_type[i], int(round(d.batches[0, i])), 1, 1, bool(d.servers[0, i]),
                 compute[0, 0, i], ex.pull_steady[0, 0, i], ex.push[0, 0, i], 0.0)
                for i in range(len(hetero10a)) if d.workers[0, i] or d.servers[0, i]]
        o = np.array(rows, dtype=obs_io.OBS_DTYPE)
        trials.append((d.servers[0], d.workers[0], o))
        o = o.copy()
        o["pull_s"][o["server"]] = 1e-5
        o["push_s"][o["server"]] = 1e-5
        blanked.append((d.servers[0], d.workers[0], o))
    a, b = NetworkModel(hetero10a), NetworkModel(hetero10a)
    a.fit(trials, problem.model_bytes)
    b.fit(blanked, problem.model_bytes)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-9)


def test_composition_matches_the_simulator_with_true_constants(hetero10a, problem):
    from hpcps.sim import SimOptions, compute_times, load_profiles, profile_for_job, simulate
    job = load_job(ROOT / "jobs/cifar.toml")
    profiles = load_profiles()
    prof = profile_for_job(profiles, job.workload, job.model, job.data)
    n = len(hetero10a)
    bw = np.array([nd.type.nic_bytes_per_s for nd in hetero10a.nodes])[None, None, :]
    lat = np.array([nd.type.latency_us * 1e-6 for nd in hetero10a.nodes])[None, None, :]
    speed = np.array([nd.type.speed for nd in hetero10a.nodes])
    errors = []
    points = [problem.space.encode(naive(hetero10a, 64)), problem.space.encode(balanced(hetero10a, 64))]
    points += list(problem.space.random_points(10, np.random.default_rng(2)))
    for p in points:
        s = problem.space.decode(p)
        pl = s.to_rank_schedule()
        sim = simulate(hetero10a, pl, prof, profiles.machine, SimOptions(iterations=2, optimizer="sgd",
                                                                        steady_state=True))
        d = decode_many(problem.space, problem.space.encode(s)[None])
        comp = np.zeros(n)
        for w, t in zip(pl.schedule.workers, compute_times(hetero10a, pl, prof)):
            comp[hetero10a.index(pl.rank_nodes[w.rank])] += t
        m, W = d.servers.sum(), d.workers.sum()
        per_byte = profiles.machine.aggregate_s_per_byte_per_worker * W + profiles.machine.update_cost("sgd")
        agg = per_byte * problem.model_bytes / m / speed
        it = iteration_times(d.servers, d.workers, comp[None, None], bw, lat, agg[None, None], problem.model_bytes)
        errors.append(it[0, 0] / sim.iteration_time_s - 1)
    assert np.median(np.abs(errors)) < 0.02, errors


def test_structured_model_is_an_emukit_model_that_learns_from_trials(hetero10a, problem):
    from hpcps.tune.backends.sim import SimBackend
    job = load_job(ROOT / "jobs/cifar.toml")
    backend = SimBackend(hetero10a, job, iterations=4, seed=3)
    rng = np.random.default_rng(4)
    pts = [problem.space.encode(naive(hetero10a, 64))] + [problem.space.repair(p)
                                                          for p in problem.space.random_points(4, rng)]
    model = fitted_model(problem, *run_trials(backend, problem.space, pts))
    test = [problem.space.repair(p) for p in problem.space.random_points(8, np.random.default_rng(5))]
    test.append(problem.space.encode(balanced(hetero10a, 64)))
    mean, var = model.predict(np.array(test))
    assert mean.shape == var.shape == (len(test), 1) and (var > 0).all()
    truth = np.array([backend.true_time(problem.space.decode(p)) for p in test])
    assert np.median(np.abs(mean[:, 0] / truth - 1)) < 0.1
    lm, lv = LogTime(model).predict(np.array(test))
    assert lm.shape == (len(test), 1)
    np.testing.assert_allclose(np.exp(lm[:, 0]), mean[:, 0], rtol=0.1)
    with pytest.raises(ValueError, match="n_points"):
        model.set_data(np.zeros((2, 3)), np.zeros((2, 1)))


def test_the_composition_overlaps_pushes_with_the_backward_pass_as_the_simulator_does():
    """One worker, two servers on nodes of their own, 1 ms a shard on every NIC, a 12 ms step, free
    updates. The second shard (the vector's end) is ready two thirds into the step and its push is
    through long before the step ends; the first shard's push (1 ms) comes back while the second
    shard's next values come in (1 ms), then it comes in itself: 14 ms an iteration. Pushing both at
    the end of the step: 2 ms of pushes sharing the NIC, then 2 ms of pulls, 16 ms."""
    from dataclasses import replace

    from hpcps.cluster import Cluster, Node, NodeType
    from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker
    from hpcps.sim import SimOptions, simulate
    from hpcps.sim.profile import MachineProfile, WorkloadProfile

    shard_bytes = 2 ** 19
    t = NodeType("t", 1.0, 2, shard_bytes * 8 / 1e-3 / 1e9, latency_us=0.0)
    cluster = Cluster("c", (t,), (Node("w", t), Node("s1", t), Node("s2", t)))
    profile = WorkloadProfile("p", 2 ** 18, 1e-3, 5e-4, 0.5, 0.9, 0.25, 1e6)
    machine = MachineProfile(5e9, 0.0, (("sgd", 0.0),), 3e8)
    schedule = NodeSchedule((NodePlan("w", False, (NodeWorker(22),)), NodePlan("s1", True, ()),
                             NodePlan("s2", True, ())))
    servers, workers = np.array([[False, True, True]]), np.array([[True, False, False]])
    bw = np.full((1, 1, 3), t.nic_bytes_per_s)
    compute = np.array([[[0.012, 0.0, 0.0]]])
    for forward, expected in ((1 / 3, 0.014), (1.0, 0.016)):
        it = iteration_times(servers, workers, compute, bw, np.zeros((1, 1, 3)), np.zeros((1, 1, 3)),
                             2.0 * shard_bytes, forward_fraction=forward)
        assert it[0, 0] == pytest.approx(expected, rel=1e-9)
        sim = simulate(cluster, schedule.to_rank_schedule(), replace(profile, forward_fraction=forward), machine,
                       SimOptions(iterations=2, resolution_s=0.0, steady_state=True))
        assert sim.iteration_time_s == pytest.approx(expected, rel=1e-9)


def tiny_problem(server_type, worker_types, params=2 ** 20, global_batch=8):
    """A dedicated server on node 's' and worker nodes 'w0', 'w1', ...; no memory limit."""
    from hpcps.cluster import Cluster, Node
    from hpcps.tune.problem import Problem
    from hpcps.tune.space import ScheduleSpace
    types = tuple({t.name: t for t in (server_type, *worker_types)}.values())
    nodes = (Node("s", server_type),) + tuple(Node(f"w{i}", t) for i, t in enumerate(worker_types))
    cl = Cluster("tiny", types, nodes)
    return Problem(cl, global_batch, params, ScheduleSpace(cl, global_batch, None))


def point(*nodes):
    """An encoded point from (server, worker, share, threads) per node."""
    return np.array(nodes, dtype=float).reshape(-1)


@pytest.mark.parametrize("server_nic,worker_nic,server_us,worker_us", [(10.0, 4.0, 300.0, 40.0),
                                                                       (4.0, 10.0, 40.0, 300.0)])
def test_the_composition_by_hand_for_one_server_and_one_worker(server_nic, worker_nic, server_us, worker_us):
    """One dedicated server, one worker, one shard (ready at the end of the step). An iteration is the
    step, the push (the shard over the slower of the two NICs, then the larger latency), the server's
    update (shard bytes x (alpha x workers + beta) / speed), and the pull back the same way. Under the
    prior constants (the cluster file's bandwidth; its latency plus 1 us, kept positive for the log)
    and no trials, so no correction."""
    from hpcps.cluster import NodeType
    st = NodeType("st", 2.0, 2, server_nic, latency_us=server_us)
    wt = NodeType("wt", 1.0, 2, worker_nic, latency_us=worker_us)
    problem = tiny_problem(st, [wt])
    model = StructuredModel(problem, seed=0)
    model.aggregate.coef = np.array([2e-10, 1e-10, 0.0])
    model.optimize()
    x = point((1, 0, 0.0, 1), (0, 1, 1.0, 1))
    step = model.machine.form(model.machine.theta, 1, 8, 1, 1)[0]
    shard = 4.0 * 2 ** 20
    update = shard * (2e-10 * 1 + 1e-10) / 2.0
    wire = shard / (min(server_nic, worker_nic) * 1e9 / 8) + max(server_us, worker_us) * 1e-6 + 1e-6
    expected = step + wire + update + wire
    assert model.predict_mean(x[None])[0] == pytest.approx(expected, rel=1e-9)
    parts = model.compose_parts(x[None])
    assert parts["iteration"][0] == pytest.approx(expected, rel=1e-9)
    assert parts["compute"][0, 1] == pytest.approx(step, rel=1e-9)


def update_rows(problem, d, alpha: float, beta: float, update_s: float | None = None) -> np.ndarray:
    """Three iterations' observation rows of the 3-node layout d (node 0 at speed 2): a worker of batch k
    steps for 1 ms x (1 + k); a server's update takes shard bytes x (alpha x workers + beta) / speed,
    or update_s when given (an asp server, which applies pushes one at a time)."""
    m, w = int(d.servers.sum()), int(d.workers.sum())
    rows = []
    for it in range(3):
        for node in range(3):
            k = int(round(d.batches[0, node]))
            update = (update_s if update_s is not None
                      else problem.model_bytes / m * (alpha * w + beta) / (2.0 if node == 0 else 1.0))
            if k or d.servers[0, node]:
                rows.append((it, node, node, 0 if node == 0 else 1, k, 1, 1, bool(d.servers[0, node]),
                             1e-3 * (1 + k) if k else 0.0, 0.0, 0.0, update if d.servers[0, node] else 0.0))
    return np.array(rows, dtype=obs_io.OBS_DTYPE)


def test_the_update_cost_is_fitted_to_the_servers_observed_updates():
    """Servers' update seconds follow shard bytes x (alpha x workers + beta) / node speed; trials with
    one and two workers and one and two servers pin down both constants."""
    from hpcps.cluster import NodeType
    st, wt = NodeType("st", 2.0, 2, 10.0), NodeType("wt", 1.0, 2, 4.0)
    problem = tiny_problem(st, [wt, wt])
    model = StructuredModel(problem, seed=0)
    alpha, beta = 4e-10, 3e-10
    trials = []
    for p in (point((1, 0, 0, 1), (0, 1, 1.0, 1), (0, 0, 0, 1)), point((1, 0, 0, 1), (0, 1, 0.5, 1), (0, 1, 0.5, 1)),
              point((1, 0, 0, 1), (1, 1, 0.5, 1), (0, 1, 0.5, 1))):
        trials.append((p, update_rows(problem, decode_many(problem.space, p[None]), alpha, beta)))
    model.set_observations(trials)
    model.optimize()
    np.testing.assert_allclose(model.aggregate.coef[:2], [alpha, beta], rtol=1e-6)
    assert abs(model.aggregate.coef[2]) < 1e-12       # no fixed part in these updates (they are ~1e-4 s)


# (servers, workers) of eight schedules on four_node_problem's nodes
EIGHT_LAYOUTS = [([0], [1]), ([0], [1, 2]), ([0], [1, 2, 3]), ([0, 1], [1, 2]), ([0, 1], [1, 2, 3]),
                 ([0, 1, 2], [1, 2, 3]), ([0, 1, 2, 3], [1, 2, 3]), ([0, 1, 2], [1])]


def four_node_problem():
    """A serving node and three working ones (batch 24), and pt(servers, workers): the point of a
    schedule with those nodes serving and working, each worker one thread and the same batch weight."""
    from hpcps.cluster import NodeType
    st, wt = NodeType("st", 2.0, 2, 10.0), NodeType("wt", 1.0, 2, 4.0)
    problem = tiny_problem(st, [wt, wt, wt], global_batch=24)

    def pt(servers, workers):
        return point(*[(i in servers, i in workers, 1.0, 1) for i in range(4)])
    return problem, pt


def test_the_correction_learns_what_the_composition_misses_across_schedules(monkeypatch):
    """Measured times off the composition by a factor that grows with the servers and shrinks with
    the workers: the correction (a mean and a Gaussian process over the schedule's summary) brings the
    prediction to the measurement on the trials and between them, where one mean factor is off by up
    to a fifth. The trials here are exact: no run-to-run noise for the correction to allow for (with
    the default's 6% it smooths them, up to 2% off here)."""
    from hpcps.tune.models import structured
    monkeypatch.setattr(structured, "TRIAL_NOISE_SD", 1e-3)
    problem, pt = four_node_problem()
    X = np.array([pt(*sw) for sw in EIGHT_LAYOUTS])
    between = np.array([pt([0, 1], [1]), pt([0, 1, 2], [1, 2])])

    def factor(points):
        d = decode_many(problem.space, points)
        return np.exp(0.2 + 0.8 * d.servers.sum(1) / 4 - 0.4 * d.workers.sum(1) / 4)

    # One sample: the composition under the fitted constants, no step noise, so that the measured
    # times are known multiples of it.
    bare = StructuredModel(problem, n_samples=1, seed=0)
    bare.optimize()
    Y = bare.predict_mean(X) * factor(X)
    model = StructuredModel(problem, n_samples=1, seed=0)
    model.set_data(X, Y[:, None])
    model.optimize()
    np.testing.assert_allclose(model.predict_mean(X), Y, rtol=0.01)
    np.testing.assert_allclose(model.predict(X)[0][:, 0], Y, rtol=0.01)
    np.testing.assert_allclose(np.exp(model.predict_log(X)[0][:, 0]), Y, rtol=0.01)
    np.testing.assert_allclose(model.predict_mean(between), bare.predict_mean(between) * factor(between), rtol=0.02)


def test_a_prediction_keeps_a_trials_run_to_run_spread_however_close_the_trials():
    """Eight trials the composition explains exactly: the correction's own spread would shrink to
    nothing there, yet a schedule measured again lands some 6% away (the testbed's re-measurements),
    so even at a trial's own schedule the log-time interval keeps that spread."""
    from hpcps.tune.models.structured import TRIAL_NOISE_SD
    problem, pt = four_node_problem()
    X = np.array([pt(*sw) for sw in EIGHT_LAYOUTS])
    bare = StructuredModel(problem, n_samples=1, seed=0)
    bare.optimize()
    model = StructuredModel(problem, n_samples=1, seed=0)
    model.set_data(X, bare.predict_mean(X)[:, None])
    model.optimize()
    mean, var = model.predict_log(X)
    np.testing.assert_allclose(np.exp(mean[:, 0]), bare.predict_mean(X), rtol=0.01)
    assert np.all(var[:, 0] >= 0.99 * TRIAL_NOISE_SD ** 2)
    assert TRIAL_NOISE_SD == pytest.approx(0.06)


@pytest.mark.parametrize("seed", [0, 1])
def test_noisy_steps_add_the_expected_excess_of_the_slowest_worker(seed):
    """Four equal workers whose steps vary by a mean-one log-normal factor (sigma 0.3), a network too
    fast to matter: an iteration waits for the slowest, on average E[max of 4] - 1 = 33% of a step
    longer than a step (integrated here), which the prediction adds to the noiseless composition. Its
    16 stratified draws of the noise estimate that excess to within a quarter."""
    from scipy.stats import norm

    from hpcps.cluster import NodeType
    from hpcps.tune.models.structured import PRIOR_CORRECTION_SD
    st, wt = NodeType("st", 2.0, 2, 400.0, latency_us=0.0), NodeType("wt", 1.0, 2, 400.0, latency_us=0.0)
    problem = tiny_problem(st, [wt] * 4, params=2 ** 10, global_batch=400)
    x = point((1, 0, 0, 1), *[(0, 1, 1.0, 1)] * 4)[None]
    model = StructuredModel(problem, seed=seed)
    # The constants' samples all at the fit: only the step noise varies between samples.
    model.machine.cov[:] = 0.0
    model.network.cov[:] = 0.0
    model.optimize()
    sigma = 0.3
    model.machine.noise_sd = sigma
    noiseless = model.predict_mean(x)[0]
    step = model.compose_parts(x)["compute"][0, 1]
    assert noiseless == pytest.approx(step, rel=0.01)
    mean, _ = model.predict(x)
    excess = mean[0, 0] / np.exp(PRIOR_CORRECTION_SD ** 2 / 2) - noiseless     # no trials: the prior correction
    z = np.linspace(-8, 8, 20001)
    slowest = np.trapezoid(np.exp(sigma * z - sigma ** 2 / 2) * 4 * norm.cdf(z) ** 3 * norm.pdf(z), z)
    assert slowest - 1 == pytest.approx(0.33, abs=0.01)
    assert excess / step == pytest.approx(slowest - 1, rel=0.25)


# -- push codecs -------------------------------------------------------------------------------------

def spread(problem, codecs, servers=(0, 1, 2, 3, 4)):
    """Servers on the given nodes, equal workers on the four fast nodes (g1-g4) with these codec indices."""
    p = np.zeros((5, 5))
    p[list(servers), 0] = 1
    p[1:, 1] = 1
    p[1:, 2] = 0.25
    p[:, 3] = 8
    p[:, 4] = codecs
    return problem.space.repair(p.reshape(-1))


def test_push_sizes_and_costs_are_the_message_plans_and_the_calibration(slownet):
    from hpcps.config.schedule import Schedule, WorkerSpec
    from hpcps.ps.plan import plan_for_job
    cluster, job, profiles, problem = slownet
    assert problem.codecs == ("none", "int8", "sign")         # the job's first, then hpcps.ps.codec's order
    for k, codec in enumerate(problem.codecs):
        for m in (1, 3):
            plan = plan_for_job(job, Schedule(tuple(range(m)), (WorkerSpec(m, 8, 1, codec),)), problem.params)
            assert problem.push_slice_bytes(k, m) * m == pytest.approx(plan.push_bytes(), rel=1e-12)
    assert problem.push_slice_bytes(1, 1) < problem.model_bytes / 3.9
    assert [problem.codec_cost(k) for k in range(3)] == [(0.0, 0.0), (2e-8, 4e-9), (3e-8, 6e-9)]


def test_composition_with_codecs_matches_the_simulator_with_true_constants(slownet):
    """Each worker's push at its codec's bytes, its encoding on its step and the servers' decoding on
    their updates: on schedules whose float32 composition follows the simulator (a server on the 10 Gb/s
    node), so does the one with codecs, where leaving the codecs out is a fifth or more off. (Servers
    only on the 1 Gb/s workers come out up to a tenth slow with int8: the composition leaves out both that
    the next forward pass starts on the pulls that have arrived and that pushes and pulls share those
    NICs, which for float32 pushes about cancel.)"""
    from hpcps.sim import SimOptions, compute_times, job_options, profile_for_job, simulate
    cluster, job, profiles, problem = slownet
    prof = profile_for_job(profiles, job.workload, job.model, job.data)
    codecs = StructuredModel(problem).codecs
    bw = np.array([nd.type.nic_bytes_per_s for nd in cluster.nodes])[None, None, :]
    lat = np.array([nd.type.latency_us * 1e-6 for nd in cluster.nodes])[None, None, :]
    speed = np.array([nd.type.speed for nd in cluster.nodes])
    machine = profiles.machine
    for choice in ([0] * 5, [1] * 5, [2] * 5, [0, 1, 1, 2, 2], [0, 0, 1, 1, 1]):
        for servers in ((0, 1, 2, 3, 4), (0, 1)):
            p = spread(problem, choice, servers)
            pl = problem.space.decode(p).to_rank_schedule()
            sim = simulate(cluster, pl, prof, machine, SimOptions(iterations=2, steady_state=True,
                                                                  **job_options(job))).iteration_time_s
            d = decode_many(problem.space, p[None])
            comp = np.zeros(len(cluster))
            for w, t in zip(pl.schedule.workers, compute_times(cluster, pl, prof)):
                comp[cluster.index(pl.rank_nodes[w.rank])] += t
            per_byte = machine.aggregate_s_per_byte_per_worker * d.workers.sum() + machine.update_cost("sgd")
            agg = per_byte * problem.model_bytes / d.servers.sum() / speed
            it = iteration_times(d.servers, d.workers, (comp + codecs.encode_s(d)[0])[None, None], bw, lat,
                                 (agg + codecs.decode_s(d)[0])[None, None], problem.model_bytes,
                                 push_bytes=codecs.push_bytes(d))[0, 0]
            plain = iteration_times(d.servers, d.workers, comp[None, None], bw, lat, agg[None, None],
                                    problem.model_bytes)[0, 0]
            assert it == pytest.approx(sim, rel=0.03), (choice, servers)
            if choice[1:] in ([1] * 4, [2] * 4):
                assert plain > 1.2 * sim, (choice, servers)


def test_the_structured_model_predicts_what_a_codec_changes(slownet):
    """Fitted to five simulated trials (two of them with codecs), the model's prediction moves with each
    worker's codec as the simulator's time does. With the network known (the cluster file's constants,
    exactly: the trials' pull and push times left out), the predictions follow the simulator's within a
    few percent; fitted to them, the network puts the 1 Gb/s NICs at about 1.8 Gb/s on this job (as it
    does without codecs: the simulator's pull windows in the steady state are shorter than the
    composition's), which shrinks every saving on the wire, but int8 is still predicted faster."""
    from hpcps.tune.backends.sim import SimBackend
    cluster, job, profiles, problem = slownet
    backend = SimBackend(cluster, job, profiles, iterations=3, seed=2)
    space = problem.space
    trials = [space.encode(naive(cluster, 64)), spread(problem, [0] * 5), spread(problem, [0, 1, 1, 2, 2])]
    trials += [space.repair(p) for p in space.random_points(2, np.random.default_rng(7))]
    X, Y, obs = run_trials(backend, space, trials)
    test = np.array([spread(problem, c) for c in ([0] * 5, [1] * 5, [2] * 5, [0, 0, 1, 1, 1])])
    truth = np.array([backend.true_time(space.decode(p)) for p in test])
    assert truth[1] < 0.8 * truth[0] and truth[2] < 0.8 * truth[0]

    def fitted(observations, network_known=False):
        model = StructuredModel(problem, seed=0)
        if network_known:
            model.network.cov[:] = 0.0
        model.set_data(X, Y)
        model.set_observations(observations)
        model.optimize()
        return model

    no_wire = []
    for p, o in obs:
        o = o.copy()
        o["pull_s"] = o["push_s"] = 0.0
        no_wire.append((p, o))
    model = fitted(no_wire, network_known=True)
    np.testing.assert_allclose(model.network.theta, model.network.prior_mean)
    pred = model.predict_mean(test)
    np.testing.assert_allclose(pred, truth, rtol=0.08)
    np.testing.assert_allclose(pred[1:] / pred[0], truth[1:] / truth[0], rtol=0.05)
    pred = fitted(obs).predict_mean(test)
    assert pred[1] < 0.97 * pred[0]


def test_the_model_composes_the_jobs_pull_codec_as_the_simulator_does(slownet):
    """With bf16 pulls (the job's pull_codec) the problem's pull bytes are the plan's, half of float32;
    each worker is charged the decoding of the whole model and each server the encoding of its shard, at
    the calibrated costs; and the composition with true constants comes close to the simulator, where
    one with float32 pulls is a fifth to a third off. Close, not within the 3% of float32 pulls: with
    pushes and pulls of different sizes the composition is 4.5% under (float32 pushes) and 5.7% over
    (int8 pushes) here, 3.8% and 0.9% without codec costs. The composition leaves out that a node's
    pushes and pulls share its NIC and that the next forward pass starts on the pulls that have
    arrived, which for pushes as large as pulls about cancel (test_composition_with_codecs_matches_...);
    where the costs' further 5% with int8 pushes comes from is not isolated: a known gap, bounded here."""
    from dataclasses import replace

    from hpcps.config.schedule import Schedule, WorkerSpec
    from hpcps.ps.plan import plan_for_job
    from hpcps.sim import SimOptions, compute_times, job_options, profile_for_job, simulate
    cluster, job, profiles, _ = slownet
    job = replace(job, exchange=replace(job.exchange, pull_codec="bf16"))
    profiles = replace(profiles, machine=replace(profiles.machine, codec_s_per_element=tuple(
        sorted({**dict(profiles.machine.codec_s_per_element), "bf16": (1e-8, 2e-9)}.items()))))
    problem = problem_for(cluster, job, profiles, codecs=("int8",))
    plan = plan_for_job(job, Schedule((0,), (WorkerSpec(1, 8),)), problem.params)
    assert problem.pull_bytes == plan.pull_bytes() == problem.model_bytes / 2
    assert problem.pull_codec_cost == (1e-8, 2e-9)
    prof = profile_for_job(profiles, job.workload, job.model, job.data)
    codecs = StructuredModel(problem).codecs
    bw = np.array([nd.type.nic_bytes_per_s for nd in cluster.nodes])[None, None, :]
    lat = np.array([nd.type.latency_us * 1e-6 for nd in cluster.nodes])[None, None, :]
    speed = np.array([nd.type.speed for nd in cluster.nodes])
    machine = profiles.machine
    for choice in ([0] * 5, [1] * 5):
        p = spread(problem, choice, (0, 1, 2, 3, 4))
        pl = problem.space.decode(p).to_rank_schedule()
        sim = simulate(cluster, pl, prof, machine, SimOptions(iterations=2, steady_state=True,
                                                              **job_options(job))).iteration_time_s
        d = decode_many(problem.space, p[None])
        comp = np.zeros(len(cluster))
        for w, t in zip(pl.schedule.workers, compute_times(cluster, pl, prof)):
            comp[cluster.index(pl.rank_nodes[w.rank])] += t
        enc, dec = codecs.encode_s(d)[0], codecs.decode_s(d)[0]
        push_encode = codecs.encode[d.codecs[0]] * codecs.remote_values(d)[0]
        np.testing.assert_allclose(enc, np.where(d.workers[0], push_encode + 2e-9 * problem.params, 0) / speed)
        push_decode = np.where(d.workers[0], codecs.decode[d.codecs[0]], 0.0)
        others = push_decode.sum() - push_decode          # every server is here a node of its own
        np.testing.assert_allclose(dec, (others + 1e-8) * problem.params / 5 / speed, rtol=1e-9)
        per_byte = machine.aggregate_s_per_byte_per_worker * d.workers.sum() + machine.update_cost("sgd")
        agg = per_byte * problem.model_bytes / d.servers.sum() / speed
        it, float32_pulls = (iteration_times(d.servers, d.workers, (comp + enc)[None, None], bw, lat,
                                             (agg + dec)[None, None], pull_bytes,
                                             push_bytes=codecs.push_bytes(d))[0, 0]
                             for pull_bytes in (problem.pull_bytes, problem.model_bytes))
        assert abs(it / sim - 1) < 0.06 and abs(float32_pulls / sim - 1) > 0.19, (choice, it / sim, float32_pulls / sim)


# -- ssp and asp ------------------------------------------------------------------------------------

STALE_CASES = (("hetero10a", "cifar"), ("slownet5", "cifar-wide"), ("hetero8", "hetero8"), ("uniform4", "default"))


def stale_composition_errors(cluster_name: str, job_name: str, sync: str, points: int = 8) -> list[float]:
    """composed / simulated - 1 of one global batch under sync, with the simulator's own constants (step
    times, NICs, update costs), for the naive and balanced schedules and `points` random ones."""
    from hpcps.config.job import parse_sync_name
    from hpcps.sim import SimOptions, compute_times, load_profiles, profile_for_job, simulate
    from hpcps.tune.models.stale import stale_iteration_times
    cluster = load_cluster(ROOT / f"jobs/clusters/{cluster_name}.toml")
    job = load_job(ROOT / f"jobs/{job_name}.toml")
    profiles = load_profiles()
    problem = problem_for(cluster, job, profiles)
    prof = profile_for_job(profiles, job.workload, job.model, job.data)
    mode, staleness = parse_sync_name(sync)
    bw = np.array([nd.type.nic_bytes_per_s for nd in cluster.nodes])[None, None, :]
    lat = np.array([nd.type.latency_us * 1e-6 for nd in cluster.nodes])[None, None, :]
    speed = np.array([nd.type.speed for nd in cluster.nodes])
    machine = profiles.machine
    gb = job.training.global_batch
    space = problem.space
    errors = []
    for p in [space.encode(naive(cluster, gb)), space.encode(balanced(cluster, gb))] + \
            list(space.random_points(points, np.random.default_rng(2))):
        pl = space.decode(p).to_rank_schedule()
        sim = simulate(cluster, pl, prof, machine, SimOptions(iterations=4, optimizer="sgd", steady_state=True,
                                                              sync=mode, staleness=staleness))
        if not sim.feasible:
            continue
        d = decode_many(space, space.repair(p)[None])
        comp = np.zeros(len(cluster))
        for w, t in zip(pl.schedule.workers, compute_times(cluster, pl, prof)):
            comp[cluster.index(pl.rank_nodes[w.rank])] += t
        shard = problem.model_bytes / d.servers.sum() / speed
        agg = (machine.aggregate_s_per_byte_per_worker * d.workers.sum() + machine.update_cost("sgd")) * shard
        one = (machine.aggregate_s_per_byte_per_worker + machine.update_cost("sgd")) * shard
        it = stale_iteration_times(mode, staleness, d.servers, d.workers, comp[None, None], bw, lat, agg[None, None],
                                   np.where(d.servers, one, 0.0)[None], problem.model_bytes, d.batches)[0, 0]
        errors.append(it / sim.iteration_time_s - 1)
    return errors


@pytest.mark.parametrize("sync", ["ssp1", "ssp2", "asp"])
def test_the_stale_composition_matches_the_simulator_with_true_constants(sync):
    """The time of a global batch under ssp and asp composed from the true constants against the
    simulator, on the naive, balanced and eight random schedules of four bundled clusters (hetero10a,
    slownet5, hetero8, uniform4). Measured median |error| per cluster: ssp1 2.2%, 2.0%, 0.5%, 1.6%;
    ssp2 4.8%, 2.4%, 1.0%, 2.4%; asp 4.3%, 3.9%, 1.9%, 1.1%; over the 40 schedules of a mode 0.8%
    (ssp1), 2.2% (ssp2), 2.0% (asp), with 80%, 78% and 72% of them within 10%. The bounds below are
    set from those. A known gap: some schedules are off by a sixth to a half. Under ssp they come out
    fast (down to -33%, schedules with few servers, or servers on slow NICs): the composition counts a
    server NIC's mean load per round, not the queue that the pushes of workers held at the bound and
    released together build there. Under asp the worst come out slow (+44% on hetero10a, +54% on
    slownet5: a server's load is 1.6 of its time): every worker's rate is scaled down by the busiest
    server's load, where in the simulator workers whose pushes go elsewhere lose less; with servers near
    saturation (load 0.8 to 0.9) they come out fast, by up to 27%, for want of the queue as under ssp."""
    errors = {case: np.abs(stale_composition_errors(*case, sync)) for case in STALE_CASES}
    medians = {case: float(np.median(e)) for case, e in errors.items()}
    assert all(m < 0.06 for m in medians.values()), medians
    together = np.concatenate(list(errors.values()))
    assert np.median(together) < 0.03, medians
    assert np.mean(together < 0.1) >= 0.7, together


def test_the_structured_model_predicts_what_the_synchronisation_changes():
    """Fitted to five simulated trials on hetero8 (two of them under asp), the model's prediction of a
    schedule moves with its sync as the simulator's time does: asp about twice as fast as bsp on the
    balanced schedule, ssp1 in between (close to bsp)."""
    from hpcps.tune.backends.sim import SimBackend
    cluster = load_cluster(ROOT / "jobs/clusters/hetero8.toml")
    job = load_job(ROOT / "jobs/hetero8.toml")
    problem = problem_for(cluster, job, syncs=("asp", "ssp1"))
    space = problem.space
    assert space.syncs == ("bsp", "ssp1", "asp")
    backend = SimBackend(cluster, job, iterations=3, seed=2)
    gb = problem.global_batch
    trials = [space.encode(naive(cluster, gb)), space.encode(naive(cluster, gb), "asp")]
    trials += [space.repair(p) for p in space.random_points(3, np.random.default_rng(7))]
    model = fitted_model(problem, *run_trials(backend, space, trials))
    test = np.array([space.encode(balanced(cluster, gb), s) for s in space.syncs])
    truth = np.array([backend.true_time(space.decode(p), sync=space.sync_of(p)) for p in test])
    pred = model.predict_mean(test)
    assert truth[2] < 0.6 * truth[0]
    np.testing.assert_allclose(pred / pred[0], truth / truth[0], rtol=0.15)


def test_under_ssp_a_slow_pull_bounds_the_pace_by_the_staleness():
    """One worker on a 1 Gb/s node pushing sign-coded slices (a thirty-second of float32) of the
    11M-parameter job to a server on another, pulling float32 back: its step and push take 55 ms, a pull
    350 ms. A clock c needs round c - s - 1 aggregated and pulled, so a global batch takes about
    (update + pull) / s, and when pulls are slower than a round the server sends only the newest version
    once the previous pull is in, which adds half a pull on average. Simulated 355, 237 and 129 ms for
    s = 1, 2, 4; composed within 0.2%, 13% (the half pull is a mean) and 4%."""
    from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker
    from hpcps.sim import SimOptions, compute_times, load_profiles, profile_for_job, simulate
    from hpcps.tune.models.stale import stale_iteration_times
    cluster = load_cluster(ROOT / "jobs/clusters/slownet5.toml")
    job = load_job(ROOT / "jobs/cifar-wide.toml")
    profiles = load_profiles()
    prof = profile_for_job(profiles, job.workload, job.model, job.data)
    problem = problem_for(cluster, job, profiles, codecs=("sign",))
    schedule = NodeSchedule((NodePlan("g1", False, (NodeWorker(2, 8, "sign"),)), NodePlan("g2", True, ())))
    pl = schedule.to_rank_schedule()
    d = decode_many(problem.space, problem.space.encode(schedule)[None])
    codecs = StructuredModel(problem).codecs
    comp = np.zeros(len(cluster))
    for w, t in zip(pl.schedule.workers, compute_times(cluster, pl, prof)):
        comp[cluster.index(pl.rank_nodes[w.rank])] += t
    bw = np.array([nd.type.nic_bytes_per_s for nd in cluster.nodes])[None, None, :]
    lat = np.array([nd.type.latency_us * 1e-6 for nd in cluster.nodes])[None, None, :]
    speed = np.array([nd.type.speed for nd in cluster.nodes])
    machine = profiles.machine
    agg = (machine.aggregate_s_per_byte_per_worker + machine.update_cost("sgd")) * problem.model_bytes / speed
    agg = np.where(d.servers[0], agg + codecs.decode_s(d)[0], 0.0)[None, None]
    times = {}
    for s, rel in ((1, 0.01), (2, 0.15), (4, 0.05)):
        sim = simulate(cluster, pl, prof, machine, SimOptions(iterations=6, steady_state=True, sync="ssp",
                                                              staleness=s)).iteration_time_s
        it = stale_iteration_times("ssp", s, d.servers, d.workers, (comp + codecs.encode_s(d)[0])[None, None], bw,
                                   lat, agg, agg, problem.pull_bytes, d.batches, codecs.push_bytes(d))[0, 0]
        assert it == pytest.approx(sim, rel=rel), s
        times[s] = sim
    assert times[4] < times[2] < 0.7 * times[1]


def test_a_job_under_asp_is_composed_as_asp_without_syncs_to_choose():
    """Without --syncs the model composes the job's own synchronisation: for an asp job, the asp
    composition (no sync parameter in the space), for a bsp job the bsp one as before."""
    from dataclasses import replace
    cluster = load_cluster(ROOT / "jobs/clusters/hetero8.toml")
    job = load_job(ROOT / "jobs/hetero8.toml")
    asp_job = replace(job, training=replace(job.training, sync="asp"))
    bsp, asp = StructuredModel(problem_for(cluster, job)), StructuredModel(problem_for(cluster, asp_job))
    assert asp.problem.syncs == ("asp",) and not asp.space.tunes_syncs and asp.sync_modes == [("asp", 0)]
    point = bsp.space.encode(balanced(cluster, job.training.global_batch))[None]
    assert asp.predict_mean(point)[0] < 0.7 * bsp.predict_mean(point)[0]


@pytest.mark.parametrize("cluster_file, job_file", [("hetero10a", "cifar"), ("hetero8", "hetero8")])
def test_the_network_fitted_to_the_simulators_trials_finds_its_nics(cluster_file, job_file):
    """The simulator's trials (RankStats: each rank's pull and push windows once their last message could
    start, per iteration, as a trace counts them) fitted by the network model give back the NIC the
    simulator was given where it is the bottleneck (cpu-slow's 1 Gb/s), within a quarter. Fitted to the
    windows of a cold start instead, or to the windows of nodes that serve (whose slices move in their
    rank's background), the fit lands at 5-26 times the NIC."""
    from hpcps.tune.backends.sim import SimBackend
    cl = load_cluster(ROOT / f"jobs/clusters/{cluster_file}.toml")
    job = load_job(ROOT / f"jobs/{job_file}.toml")
    problem = problem_for(cl, job)
    space = problem.space
    points = [space.encode(naive(cl, problem.global_batch)), space.encode(balanced(cl, problem.global_batch))]
    points += [space.repair(p) for p in space.random_points(4, np.random.default_rng(0))]
    X, Y, obs = run_trials(SimBackend(cl, job, iterations=6, seed=0), space, points)
    model = fitted_model(problem, X, Y, obs)
    slow = [t.name for t in cl.types].index("cpu-slow")
    fitted = np.exp(model.network.theta[slow])
    assert fitted == pytest.approx(cl.types[slow].nic_bytes_per_s, rel=0.25)
