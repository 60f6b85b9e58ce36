"""The simulator under ssp and asp (hpcps/sim/engine.py, _StaleRun): what the emulated runtime does."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hpcps.cluster import Cluster, Node, NodeType, load_cluster
from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker, balanced, naive
from hpcps.config import load_job
from hpcps.sim import SimOptions, job_options, simulate, simulate_job
from hpcps.sim.engine import simulate_run
from hpcps.sim.profile import MachineProfile, WorkloadProfile

ROOT = Path(__file__).resolve().parents[2]
TOY = WorkloadProfile("toy", params=250_000, fixed_s=1e-3, per_sample_s=5e-4, fixed_parallel=0.5,
                      per_sample_parallel=0.9, oversubscription=0.25, activation_bytes_per_sample=1e6)
MACHINE = MachineProfile(memcpy_bytes_per_s=5e9, aggregate_s_per_byte_per_worker=2e-10,
                         update_s_per_byte=(("sgd", 1e-10),), rank_overhead_bytes=3e8)
EXACT = SimOptions(iterations=8, resolution_s=0.0, overlap=False)

# A step of exactly one second at speed 1, whatever the batch; a network and servers that cost nothing.
SECOND = WorkloadProfile("second", params=4096, fixed_s=1.0, per_sample_s=0.0, fixed_parallel=0.0,
                         per_sample_parallel=0.0, oversubscription=0.0, activation_bytes_per_sample=0.0)
FREE = MachineProfile(memcpy_bytes_per_s=1e30, aggregate_s_per_byte_per_worker=0.0,
                      update_s_per_byte=(("sgd", 0.0),), rank_overhead_bytes=0.0)


def cluster_of(*groups, name="c"):
    types, nodes = [], []
    for t, names in groups:
        types.append(t)
        nodes += [Node(n, t) for n in names]
    return Cluster(name, tuple(types), tuple(nodes))


def one_and_three():
    """A server alone, a worker whose step takes 1 s and one whose step takes 3 s, on an infinitely
    fast network."""
    kw = dict(cores=1, nic_gbps=1e9, latency_us=0.0)
    srv, fast, slow = NodeType("srv", 1.0, **kw), NodeType("fast", 1.0, **kw), NodeType("slow", 1 / 3, **kw)
    c = cluster_of((srv, ["s"]), (fast, ["a"]), (slow, ["b"]))
    s = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(4),)),
                      NodePlan("b", False, (NodeWorker(4),))))
    return c, s.to_rank_schedule()


def run(cluster, placement, options, profile=TOY, machine=MACHINE):
    return simulate_run(cluster, placement, profile, machine, options)


@pytest.fixture(scope="module")
def hetero8():
    return load_cluster(ROOT / "jobs/clusters/hetero8.toml")


def schedules(hetero8):
    """Schedules with one server and with several, colocated with workers and alone."""
    two = cluster_of((NodeType("t", 1.0, 2, 1.0), ["a", "b"]), (NodeType("q", 0.5, 2, 0.5), ["c"]))
    apart = NodeSchedule((NodePlan("a", True, ()), NodePlan("b", True, (NodeWorker(8),)),
                          NodePlan("c", False, (NodeWorker(8), NodeWorker(8)))))
    return [(hetero8, naive(hetero8, 64).to_rank_schedule()), (hetero8, balanced(hetero8, 64).to_rank_schedule()),
            (two, naive(two, 24).to_rank_schedule()), (two, apart.to_rank_schedule())]


# -- ssp with staleness 0 is bsp -------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_ssp_with_staleness_0_runs_the_bsp_timeline(hetero8, case, noise):
    """From the first aggregation on, every step starts and ends as under bsp, shifted by the time bsp's
    cold start spends pulling what every rank already holds (the stale exchange sends nothing before the
    first step). So is every iteration after the second, the last bsp one aside (bsp ends an iteration
    with the last rank's, which in the last one has no pulls to wait for; a stale worker's ends with its
    own pushes). Pushes go after the step under both: ssp pushes after the step as emulated."""
    cluster, placement = schedules(hetero8)[case]
    opts = replace(EXACT, noise_sigma=noise, seed=7)
    bsp, tb = run(cluster, placement, opts)
    ssp, ts = run(cluster, placement, replace(opts, sync="ssp"))
    for a, b in ((tb.step_start, ts.step_start), (tb.step_end, ts.step_end)):
        np.testing.assert_allclose(np.diff(b[1:], axis=0), np.diff(a[1:], axis=0), rtol=1e-9, atol=1e-12)
    shift = tb.step_start[1] - ts.step_start[1]
    assert np.ptp(shift) < 1e-12 and shift[0] > 0
    if noise == 0.0:
        np.testing.assert_allclose(ssp.iteration_times_s[2:-1], bsp.iteration_times_s[2:-1], rtol=1e-9)
    # With overlap the emulated ssp still pushes after the step: bsp without overlap.
    overlapped, _ = run(cluster, placement, replace(opts, sync="ssp", overlap=True))
    assert overlapped.iteration_times_s == ssp.iteration_times_s


# -- a hand calculation ----------------------------------------------------------------------------------

def test_one_fast_and_one_slow_worker_on_a_free_network():
    """Steps of 1 s and 3 s: bsp starts both every 3 s; asp lets the fast one step every second; ssp with
    bound s lets it start clock c at max(c, 3 (c - s)): it runs ahead by s clocks, then at the slow one's
    pace. The result counts each worker at its own rate: 4 + 4 samples in 3 s under bsp (3 s a global
    batch of 8), 4 a second + 4 in 3 s under asp (1.5 s)."""
    c, placement = one_and_three()
    clocks = np.arange(8)
    opts = replace(EXACT, iterations=8)
    bsp, tl = run(c, placement, opts, SECOND, FREE)
    np.testing.assert_allclose(tl.step_start, np.column_stack([3.0 * clocks] * 2), atol=1e-12)
    assert bsp.iteration_time_s == pytest.approx(3.0)
    asp, tl = run(c, placement, replace(opts, sync="asp"), SECOND, FREE)
    np.testing.assert_allclose(tl.step_start, np.column_stack([1.0 * clocks, 3.0 * clocks]), atol=1e-12)
    assert asp.iteration_time_s == pytest.approx(1.5)
    fast, slow = (r for r in asp.ranks if r.batch)
    assert (fast.iteration_s, slow.iteration_s) == (pytest.approx(1.0), pytest.approx(3.0))
    assert (fast.compute_s, fast.wait_s, slow.compute_s) == (pytest.approx(1.0), pytest.approx(0.0), pytest.approx(3.0))
    for s in (0, 1, 2, 3):
        ssp, tl = run(c, placement, replace(opts, sync="ssp", staleness=s), SECOND, FREE)
        np.testing.assert_allclose(tl.step_start[:, 0], np.maximum(clocks, 3.0 * (clocks - s)), atol=1e-12)
        np.testing.assert_allclose(tl.step_start[:, 1], 3.0 * clocks, atol=1e-12)
        # Over these 8 steps the fast worker is s steps ahead, and faster than under bsp.
        fast = next(r for r in ssp.ranks if r.batch and r.node == "a")
        assert fast.iteration_s == pytest.approx((max(7, 3 * (7 - s)) + 1) / 8)
        # A long run goes at the slow worker's pace: the steady state leaves out the lead.
        steady, _ = run(c, placement, replace(opts, sync="ssp", staleness=s, iterations=4, steady_state=True),
                        SECOND, FREE)
        assert steady.iteration_time_s == pytest.approx(3.0)


# -- a heterogeneous cluster -------------------------------------------------------------------------------

def test_fast_workers_step_more_often_under_ssp_and_asp(hetero8):
    """hetero8 with equal batches: the cpu-slow nodes take 16 times the gpu-fast ones' steps. Bounded
    staleness lets every worker overlap its pulls with its next step and the fast ones run ahead; asp
    lets the fast ones go at their own pace."""
    placement = naive(hetero8, 64).to_rank_schedule()
    opts = SimOptions(iterations=6, steady_state=True)
    res = {m: run(hetero8, placement, replace(opts, sync=m[:3], staleness=int(m[3:] or 0)))[0]
           for m in ("bsp", "ssp1", "ssp3", "asp")}
    fast = {m: next(x.iteration_s for x in r.ranks if x.node == "n1") for m, r in res.items()}
    slow = {m: next(x.iteration_s for x in r.ranks if x.node == "n8") for m, r in res.items()}
    assert fast["asp"] < 0.2 * fast["bsp"]
    assert fast["ssp1"] < fast["bsp"] and fast["ssp3"] <= fast["ssp1"] * (1 + 1e-9)
    assert slow["ssp1"] < slow["bsp"]
    assert res["asp"].iteration_time_s < res["ssp1"].iteration_time_s < res["bsp"].iteration_time_s
    for r in res.values():
        assert r.samples_per_s == pytest.approx(64 / r.iteration_time_s)
        workers = [x for x in r.ranks if x.batch]
        assert r.samples_per_s == pytest.approx(sum(x.batch / x.iteration_s for x in workers))


@pytest.mark.parametrize("sync, staleness", [("ssp", 1), ("ssp", 2), ("asp", 0)])
def test_the_breakdown_adds_up_to_each_ranks_own_iteration(hetero8, sync, staleness):
    placement = balanced(hetero8, 64).to_rank_schedule()
    r, _ = run(hetero8, placement, SimOptions(iterations=4, steady_state=True, sync=sync, staleness=staleness,
                                              noise_sigma=0.2))
    for x in r.ranks:
        parts = (x.compute_s, x.pull_s, x.push_s, x.aggregate_s, x.wait_s)
        assert min(parts) >= 0 and sum(parts) == pytest.approx(x.iteration_s, rel=1e-9)
        assert x.batch == 0 or x.compute_s > 0


# -- the staleness bound and asp's flow control ----------------------------------------------------------

def newest_readable(tl, w: int, t: float, n_pieces: int) -> np.ndarray:
    """Per piece, the newest version worker w could read at time t (0: the one every rank starts from)."""
    out = np.zeros(n_pieces)
    rows = tl.readable[(tl.readable[:, 1] == w) & (tl.readable[:, 0] <= t)]
    np.maximum.at(out, rows[:, 2].astype(int), rows[:, 3])
    return out


@pytest.mark.parametrize("staleness", [0, 1, 2, 4])
def test_no_worker_starts_clock_c_before_every_piece_has_a_version_of_at_least_c_minus_s(hetero8, staleness):
    """Every step's start against what had arrived by then, piece by piece, with noise and stragglers; the
    bound is reached (a fast worker computes on versions exactly s old), not merely kept."""
    placement = balanced(hetero8, 64).to_rank_schedule()
    opts = SimOptions(iterations=10, sync="ssp", staleness=staleness, noise_sigma=0.3, straggler_prob=0.2, seed=5)
    _, tl = run(hetero8, placement, opts, TOY)
    n_pieces = int(tl.readable[:, 2].max()) + 1 if tl.readable.size else 1
    oldest = []
    for c in range(tl.step_start.shape[0]):
        for w in range(tl.step_start.shape[1]):
            have = newest_readable(tl, w, tl.step_start[c, w], n_pieces)
            assert have.min() >= c - staleness, (c, w, have)
            oldest.append(c - have.min())
    assert max(oldest) == staleness
    # Each worker pushes a clock after its step, and steps once its pushes before are through.
    assert (tl.step_start[1:] >= tl.iteration_end[:-1]).all() and (tl.iteration_end >= tl.step_end).all()


def thin_link():
    """A server, a fast worker behind a 0.1 Gb/s link (a) and one on a good link (b)."""
    srv, slow_link = NodeType("srv", 1.0, 2, 10.0, latency_us=0.0), NodeType("thin", 4.0, 2, 0.1, latency_us=0.0)
    c = cluster_of((srv, ["s", "b"]), (slow_link, ["a"]))
    s = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(8),)),
                      NodePlan("b", False, (NodeWorker(8),))))
    return c, s.to_rank_schedule()


def test_asp_applies_a_workers_next_push_only_after_the_answer_to_its_previous_has_left():
    """A fast worker behind a slow link that pushes int8 (a quarter of the bytes it pulls back): its next
    push arrives while the answer to the previous one is still on its way, and waits for it to leave."""
    c, placement = thin_link()
    _, tl = run(c, placement, SimOptions(iterations=8, sync="asp", codec="int8", resolution_s=0.0))
    upd, pulls = tl.updates, tl.pulls
    assert (upd[:, 4] >= 0).all()
    held = 0
    for p, w, clock, start in zip(upd[:, 3], upd[:, 4], upd[:, 5], upd[:, 0]):
        if clock == 0:
            continue
        answer = pulls[(pulls[:, 2] == p) & (pulls[:, 3] == w) & (pulls[:, 4] == clock - 1)]
        assert answer.shape[0] == 1 and start >= answer[0, 1]
        held += start == answer[0, 1]
    assert held >= 6
    # Every push is applied once and answered once; the fast worker does not wait for its answers: it
    # starts each step before the answer to its last push has arrived.
    n_pieces = int(upd[:, 3].max()) + 1
    assert upd.shape[0] == pulls.shape[0] == 8 * 2 * n_pieces
    for clock in range(7):
        answers = pulls[(pulls[:, 3] == 0) & (pulls[:, 4] == clock)]
        assert tl.step_start[clock + 1, 0] < answers[:, 1].min()


def test_ssp_sends_a_slow_receiver_only_the_newest_version():
    """Worker a pushes int8 (a quarter of what it pulls), so rounds end faster than its pulls arrive:
    whenever a pull arrives and a newer version exists, the newest goes at once; versions are skipped,
    never sent out of order."""
    c, placement = thin_link()
    _, tl = run(c, placement, SimOptions(iterations=12, sync="ssp", staleness=3, codec="int8", resolution_s=0.0))
    made = tl.updates[:, [1, 3, 5]]                 # (end, piece, round): version round + 1 exists from end

    def newest(ver, t):
        """The newest version of a piece that exists at time t; ver: the piece's rows of made."""
        return int(ver[ver[:, 0] <= t + 1e-12, 2].max()) + 1

    skipped = 0
    for piece in np.unique(tl.pulls[:, 2]):
        mine = tl.pulls[(tl.pulls[:, 2] == piece) & (tl.pulls[:, 3] == 0)]
        mine = mine[np.argsort(mine[:, 0])]
        ver = made[made[:, 1] == piece]
        assert (np.diff(mine[:, 4]) > 0).all() and (mine[1:, 0] >= mine[:-1, 1]).all()
        for (start, _, _, _, version), (_, prev_end, _, _, prev_version) in zip(mine[1:], mine[:-1]):
            assert version == newest(ver, start)
            if newest(ver, prev_end) > prev_version:     # already newer when the last one arrived
                assert start == prev_end
            skipped += version > prev_version + 1
    assert skipped > 0


def test_a_step_that_ends_while_its_rank_updates_a_piece_ends_with_the_update():
    """The emulated step polls the exchange while it is held; an update begun then runs to its end
    before the hold returns. Updates made slow here: a colocated server's asp steps outlast the gaps."""
    c = cluster_of((NodeType("t", 1.0, 2, 10.0, latency_us=0.0), ["a", "b", "d"]))
    s = NodeSchedule((NodePlan("a", True, (NodeWorker(4),)), NodePlan("b", False, (NodeWorker(4),)),
                      NodePlan("d", False, (NodeWorker(4),))))
    placement = s.to_rank_schedule()
    slow = replace(MACHINE, update_s_per_byte=(("sgd", 2e-9),))
    _, tl = run(c, placement, SimOptions(iterations=10, sync="asp", resolution_s=0.0), TOY, slow)
    step = TOY.step_time(4, 1, 2, 1)
    late = 0
    for start, end in zip(tl.step_start[:, 0], tl.step_end[:, 0]):
        assert end >= start + step - 1e-12
        if end > start + step + 1e-12:
            ups = tl.updates[(tl.updates[:, 2] == 0) & (tl.updates[:, 0] < start + step) & (tl.updates[:, 1] == end)]
            assert ups.shape[0] == 1
            late += 1
    assert late > 0


def test_a_rank_that_serves_and_works_updates_during_its_own_step_under_asp(hetero8):
    """Under bsp a rank's updates wait for its step to end; under asp (emulated: the rank keeps serving
    while its step is held) they happen while it computes."""
    placement = naive(hetero8, 64).to_rank_schedule()
    server = placement.schedule.servers[0]
    w = next(i for i, x in enumerate(placement.schedule.workers) if x.rank == server)
    _, tl = run(hetero8, placement, SimOptions(iterations=8, sync="asp"), TOY)
    own = tl.updates[tl.updates[:, 2] == server]
    inside = [(own[:, 0] >= a) & (own[:, 1] <= b) for a, b in zip(tl.step_start[:, w], tl.step_end[:, w])]
    assert np.any(inside)


# -- options -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, words", [
    (dict(sync="bulk"), "sync must be one of bsp, ssp, asp, got 'bulk'"),
    (dict(sync="ssp", staleness=-1), "staleness must be an integer from 0 to 1000, got -1"),
    (dict(sync="ssp", staleness=1.5), "staleness must be an integer"),
    (dict(sync="ssp", staleness=True), "staleness must be an integer"),
    (dict(sync="ssp", staleness=1001), "staleness must be an integer from 0 to 1000"),
    (dict(sync="asp", staleness=2), "staleness applies to sync = 'ssp' only"),
    (dict(staleness=1), "staleness applies to sync = 'ssp' only"),
])
def test_bad_sync_options(hetero8, bad, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        simulate(hetero8, naive(hetero8, 8).to_rank_schedule(), TOY, MACHINE, SimOptions(**bad))


def test_the_jobs_sync_reaches_the_simulator(hetero8):
    job = load_job(ROOT / "jobs/hetero8.toml")
    stale = replace(job, training=replace(job.training, sync="ssp", staleness=2))
    assert job_options(stale)["sync"] == "ssp" and job_options(stale)["staleness"] == 2
    placement = naive(hetero8, 64).to_rank_schedule()
    opts = SimOptions(iterations=4, steady_state=True)
    bsp, ssp = simulate_job(hetero8, placement, job, opts), simulate_job(hetero8, placement, stale, opts)
    assert ssp.iteration_time_s < bsp.iteration_time_s
