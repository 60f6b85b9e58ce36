import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hpcps.cluster import Cluster, Node, NodeType, load_cluster
from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker, balanced, naive
from hpcps.sim import SimOptions, load_profiles, simulate
from hpcps.sim.engine import BYTES_PER_ELEMENT
from hpcps.sim.profile import MachineProfile, WorkloadProfile

ROOT = Path(__file__).resolve().parents[2]

# Round numbers, so expected times can be written down; the calibrated profiles are tested apart.
TOY = WorkloadProfile("toy", params=250_000, fixed_s=1e-3, per_sample_s=5e-4, fixed_parallel=0.5,
                      per_sample_parallel=0.9, oversubscription=0.25, activation_bytes_per_sample=1e6)
MACHINE = MachineProfile(memcpy_bytes_per_s=5e9, aggregate_s_per_byte_per_worker=2e-10,
                         update_s_per_byte=(("sgd", 1e-10),), rank_overhead_bytes=3e8)
EXACT = SimOptions(iterations=3, resolution_s=0.0)


def cluster_of(*groups, name="c"):
    """groups: (NodeType, [names]) in order."""
    types, nodes = [], []
    for t, names in groups:
        types.append(t)
        nodes += [Node(n, t) for n in names]
    return Cluster(name, tuple(types), tuple(nodes))


def sim(cluster, schedule, options=EXACT, profile=TOY):
    return simulate(cluster, schedule.to_rank_schedule(), profile, MACHINE, options)


def by_node(result):
    return {r.node: r for r in result.ranks}


@pytest.fixture(scope="module")
def hetero8():
    return load_cluster(ROOT / "jobs/clusters/hetero8.toml")


def test_a_node_at_speed_a_quarter_computes_four_times_as_long():
    fast, slow = NodeType("one", 1.0, 4, 10.0), NodeType("quarter", 0.25, 4, 10.0)
    c = cluster_of((fast, ["a"]), (slow, ["b"]))
    r = by_node(sim(c, naive(c, 32)))
    assert r["b"].compute_s == pytest.approx(4 * r["a"].compute_s, rel=1e-12)
    assert r["a"].compute_s == pytest.approx(TOY.fixed_s + 16 * TOY.per_sample_s, rel=1e-12)


def test_fixed_ms_adds_to_every_step():
    plain, launch = NodeType("plain", 2.0, 4, 10.0), NodeType("launch", 2.0, 4, 10.0, fixed_ms=3.0)
    c = cluster_of((plain, ["a"]), (launch, ["b"]))
    r = by_node(sim(c, naive(c, 32)))
    assert r["b"].compute_s - r["a"].compute_s == pytest.approx(3e-3, rel=1e-9)


def test_two_flows_through_one_nic_each_get_half_its_bandwidth():
    # A server alone on a 1 Gb/s node, two workers on 100 Gb/s nodes, no latency: the server's NIC is
    # shared by two pulls (outwards) and then two pushes (inwards).
    srv, wide = NodeType("srv", 1.0, 2, 1.0, latency_us=0.0), NodeType("wide", 1.0, 2, 100.0, latency_us=0.0)
    c = cluster_of((srv, ["s"]), (wide, ["a", "b"]))
    s = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(4),)),
                      NodePlan("b", False, (NodeWorker(4),))))
    nbytes = BYTES_PER_ELEMENT * TOY.params
    half = 1e9 / 8 / 2
    for sharing in ("maxmin", "equal"):
        r = by_node(sim(c, s, replace(EXACT, sharing=sharing)))
        for w in ("a", "b"):
            assert r[w].pull_s == pytest.approx(nbytes / half, rel=1e-9)
            assert r[w].push_s == pytest.approx(nbytes / half, rel=1e-9)
    # One worker alone gets the whole NIC.
    one = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(8),))))
    assert by_node(sim(c, one))["a"].pull_s == pytest.approx(nbytes / (2 * half), rel=1e-9)


def test_latency_is_added_once_per_message():
    t0, t1 = NodeType("t", 1.0, 2, 8.0, latency_us=0.0), NodeType("t", 1.0, 2, 8.0, latency_us=500.0)
    s = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(4),))))
    fast = by_node(sim(cluster_of((t0, ["s", "a"])), s))["a"]
    slow = by_node(sim(cluster_of((t1, ["s", "a"])), s))["a"]
    assert slow.pull_s - fast.pull_s == pytest.approx(500e-6, rel=1e-9)


def test_max_min_gives_the_leftover_to_the_flow_not_held_back_elsewhere():
    """A server's NIC sends the first pulls to two workers at once; worker a's NIC takes a quarter of
    the server's bandwidth. Max-min sharing holds a's pull to that quarter and lets b's pull use the
    other three quarters; equal shares give b only half, and the rest of the server's NIC idles."""
    srv, wide = NodeType("srv", 1.0, 2, 8.0, latency_us=0.0), NodeType("wide", 1.0, 2, 8.0, latency_us=0.0)
    narrow = NodeType("narrow", 1.0, 2, 2.0, latency_us=0.0)
    c = cluster_of((srv, ["s"]), (narrow, ["a"]), (wide, ["b"]))
    s = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(4),)),
                      NodePlan("b", False, (NodeWorker(4),))))
    nbytes = BYTES_PER_ELEMENT * TOY.params
    full = 8e9 / 8
    one = replace(EXACT, iterations=1)                     # the cold start: both pulls begin together
    fair = by_node(sim(c, s, one))
    assert fair["a"].pull_s == pytest.approx(nbytes / (full / 4), rel=1e-9)
    assert fair["b"].pull_s == pytest.approx(nbytes / (3 * full / 4), rel=1e-9)
    equal = by_node(sim(c, s, replace(one, sharing="equal")))
    assert equal["a"].pull_s == pytest.approx(nbytes / (full / 4), rel=1e-9)
    assert equal["b"].pull_s == pytest.approx(nbytes / (full / 2), rel=1e-9)


def test_each_direction_of_a_nic_has_its_own_bandwidth():
    """Two nodes that each serve a shard and work: the first pulls cross between them in both
    directions at once, each at the full bandwidth of one direction of the NICs (full duplex)."""
    t = NodeType("t", 1.0, 2, 8.0, latency_us=0.0)
    c = cluster_of((t, ["a", "b"]))
    s = NodeSchedule((NodePlan("a", True, (NodeWorker(4),)), NodePlan("b", True, (NodeWorker(4),))))
    r = sim(c, s, replace(EXACT, iterations=1), QUARTERS)
    shard = BYTES_PER_ELEMENT * QUARTERS.params / 2
    for rank in r.ranks:
        assert rank.pull_s == pytest.approx(shard / (8e9 / 8), rel=1e-9)
    assert r.bytes_per_iteration == pytest.approx(4 * shard)


@pytest.mark.parametrize("server_us,worker_us", [(0.0, 700.0), (700.0, 0.0), (200.0, 700.0)])
def test_a_message_waits_for_the_larger_latency_of_its_two_ends(server_us, worker_us):
    """Nodes of unequal latency: every message pays the larger of its two ends', whichever end has it."""
    free = NodeType("free", 1.0, 2, 8.0, latency_us=0.0)
    st, wt = NodeType("st", 1.0, 2, 8.0, latency_us=server_us), NodeType("wt", 1.0, 2, 8.0, latency_us=worker_us)
    s = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(4),))))
    base = by_node(sim(cluster_of((free, ["s", "a"])), s))["a"]
    slow = by_node(sim(cluster_of((st, ["s"]), (wt, ["a"])), s))["a"]
    assert slow.pull_s - base.pull_s == pytest.approx(700e-6, rel=1e-9)
    assert slow.push_s - base.push_s == pytest.approx(700e-6, rel=1e-9)


def test_ranks_of_one_node_copy_memory_and_leave_the_nic_alone():
    slow_net = NodeType("t", 1.0, 8, 0.001)      # 1 Mb/s: a network transfer would take seconds
    c = cluster_of((slow_net, ["a"]))
    s = NodeSchedule((NodePlan("a", True, (NodeWorker(4), NodeWorker(4))),))
    r = sim(c, s)
    assert r.bytes_per_iteration == 0
    assert r.iteration_time_s < 0.1
    nbytes = BYTES_PER_ELEMENT * TOY.params
    assert r.ranks[1].pull_s == pytest.approx(nbytes / MACHINE.memcpy_bytes_per_s + 1e-6, rel=1e-9)


def test_a_rank_serving_itself_copies_float32_and_its_neighbour_sends_encoded():
    """With int8 pushes, rank 0 (server and worker) copies its own push as float32 values, as the
    exchange does; rank 1 on the same node sends it encoded, a message through memory."""
    from hpcps.sim.engine import LOCAL_LATENCY_S, _Run
    c = cluster_of((NodeType("t", 1.0, 8, 1.0), ["a"]))
    s = NodeSchedule((NodePlan("a", True, (NodeWorker(4), NodeWorker(4))),))
    run = _Run(c, s.to_rank_schedule(), TOY, MACHINE, replace(EXACT, codec="int8"))
    push = run.kind == 1
    own, other = push & (run.src == 0), push & (run.src == 1)
    raw = BYTES_PER_ELEMENT * run.plan.pieces[0].size
    assert run.local_time[own][0] == pytest.approx(raw / MACHINE.memcpy_bytes_per_s, rel=1e-12)
    assert run.bytes[other][0] < raw / 3.9
    assert run.local_time[other][0] == pytest.approx(LOCAL_LATENCY_S + run.bytes[other][0] / MACHINE.memcpy_bytes_per_s,
                                                     rel=1e-12)


@pytest.mark.parametrize("steady", [False, True])
def test_the_breakdown_adds_up_to_the_iteration_time(hetero8, steady):
    for make in (naive, balanced):
        r = sim(hetero8, make(hetero8, 64), replace(EXACT, noise_sigma=0.2, straggler_prob=0.2, steady_state=steady))
        assert len(r.iteration_times_s) == EXACT.iterations
        for rank in r.ranks:
            total = rank.compute_s + rank.pull_s + rank.push_s + rank.aggregate_s + rank.wait_s
            assert total == pytest.approx(r.iteration_time_s, rel=1e-9)
        assert sum(r.iteration_times_s) == pytest.approx(r.iteration_time_s * len(r.iteration_times_s))


def scale_network(cluster, factor, only=None):
    types = {t.name: (replace(t, nic_gbps=t.nic_gbps * factor) if only in (None, t.name) else t)
             for t in cluster.types}
    return Cluster(cluster.name, tuple(types.values()),
                   tuple(Node(n.name, types[n.type.name]) for n in cluster.nodes))


@pytest.mark.parametrize("name", ["hetero8", "hetero10a", "hetero10b"])
def test_more_bandwidth_never_slows_an_iteration(name):
    """Every NIC faster: never slower. (One node type's NICs faster can be slower: see
    test_next_iteration_pulls_share_a_nic_with_this_iterations_pushes.)"""
    base = load_cluster(ROOT / f"jobs/clusters/{name}.toml")
    for make in (naive, balanced):
        schedule = make(base, 64)
        variants = [EXACT, replace(EXACT, noise_sigma=0.3, seed=4), replace(EXACT, sharing="equal")]
        for options in variants + [replace(v, overlap=False) for v in variants]:
            times = [sim(scale_network(base, f), schedule, options).iteration_time_s for f in (0.5, 1, 3, 100)]
            assert all(b <= a * (1 + 1e-9) for a, b in zip(times, times[1:])), (make.__name__, options, times)


def test_next_iteration_pulls_share_a_nic_with_this_iterations_pushes():
    """A server that also works updates its piece after its step and sends it to every worker at once,
    while its own last push is still on its NIC. Under max-min sharing the pulls to workers on slow
    NICs are held back by those NICs and leave the push most of the server's; when those NICs get
    faster, the pulls take their fair share and the push on the critical path ends later. So one node
    type's NICs made faster can slow an iteration (here by 1.5%), as it would a real run whose MPI
    shares NICs fairly."""
    base = load_cluster(ROOT / "jobs/clusters/hetero10a.toml")
    s = balanced(base, 64)
    t3, t100 = (sim(scale_network(base, f, "cpu-slow"), s).iteration_times_s[0] for f in (3, 100))
    assert t100 > t3 * 1.01


# A model of 2^18 elements (1 MiB) in pieces of 256 KiB: four pieces, 1 ms each on a 2.097152 Gb/s NIC.
QUARTERS = replace(TOY, params=2 ** 18)
FREE_SERVER = replace(MACHINE, aggregate_s_per_byte_per_worker=0.0, update_s_per_byte=(("sgd", 0.0),))
PIECE_S = 1e-3


def one_server_one_worker(batch=22):
    t = NodeType("t", 1.0, 2, 2 ** 18 * 8 / PIECE_S / 1e9, latency_us=0.0)
    c = cluster_of((t, ["s", "a"]))
    return c, NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(batch),))))


def test_pushes_overlap_the_backward_pass_by_the_expected_amount():
    """One worker, one server on another node, four pieces of 1 ms each on the wire, a 12 ms step, a
    free server. The forward pass is the first third of the step, and the backward pass produces a
    piece every 2 ms from the end of the vector, so three pushes end while it computes; the last
    (posted at the step's end) moves while the three pieces already updated come back, and the
    worker's NIC brings in the four pieces in 4 ms: 16 ms an iteration. Pushing everything after the
    step: 4 ms of pushes, then 4 ms of pulls, 20 ms."""
    c, s = one_server_one_worker()
    step = TOY.fixed_s + 22 * TOY.per_sample_s
    assert step == pytest.approx(0.012)

    def iteration(profile, **options):
        r = simulate(c, s.to_rank_schedule(), profile, FREE_SERVER, replace(EXACT, iterations=4, bucket_mb=0.25,
                                                                            **options))
        return r, np.array(r.iteration_times_s[1:])        # the first also pulls from the start

    r, overlapped = iteration(replace(QUARTERS, forward_fraction=1 / 3))
    np.testing.assert_allclose(overlapped, step + 4 * PIECE_S, rtol=1e-9)
    _, after = iteration(replace(QUARTERS, forward_fraction=1 / 3), overlap=False)
    np.testing.assert_allclose(after, step + 8 * PIECE_S, rtol=1e-9)
    _, no_forward_overlap = iteration(replace(QUARTERS, forward_fraction=1.0))
    np.testing.assert_allclose(no_forward_overlap, step + 8 * PIECE_S, rtol=1e-9)
    # The worker's breakdown: the last push alone on the wire for 1 ms, then the pulls' 3 ms after it;
    # the first iteration adds its 4 ms pull from the start.
    w = by_node(r)["a"]
    assert w.push_s == pytest.approx(PIECE_S, rel=1e-9)
    assert w.pull_s == pytest.approx((3 * 3 * PIECE_S + 4 * PIECE_S) / 4, rel=1e-9)
    assert w.compute_s + w.pull_s + w.push_s + w.aggregate_s + w.wait_s == pytest.approx(r.iteration_time_s)


def test_pushes_that_cannot_keep_up_share_the_nic():
    """The same with 3 ms a piece on the wire: the pieces are ready every 2 ms from 6 ms into the step,
    and the worker's NIC sends without a break from then until its 12 ms of pushes are through, 18 ms
    into the step. Inwards it is busy from the step's end with the four pulls: 12 ms, as each piece's
    update (at most 18 ms in) comes before the NIC has brought in the others. An iteration is the step
    and the pulls, 24 ms; pushing after the step would add all 12 ms of pushes."""
    c, s = one_server_one_worker()
    slow = Cluster(c.name, tuple(replace(t, nic_gbps=t.nic_gbps / 3) for t in c.types),
                   tuple(Node(n.name, replace(n.type, nic_gbps=n.type.nic_gbps / 3)) for n in c.nodes))
    profile = replace(QUARTERS, forward_fraction=1 / 3)
    options = replace(EXACT, iterations=4, bucket_mb=0.25)
    r = simulate(slow, s.to_rank_schedule(), profile, FREE_SERVER, options)
    np.testing.assert_allclose(r.iteration_times_s[1:], 0.024, rtol=1e-9)
    assert by_node(r)["a"].push_s == pytest.approx(6e-3, rel=1e-9)
    after = simulate(slow, s.to_rank_schedule(), profile, FREE_SERVER, replace(options, overlap=False))
    np.testing.assert_allclose(after.iteration_times_s[1:], 0.036, rtol=1e-9)


def test_the_steady_state_leaves_out_the_cold_start_and_the_last_iteration():
    """The first iteration pulls everything at once from the start; the last one's pushes share no NIC
    with next pulls. steady_state simulates one of each around those measured."""
    c = load_cluster(ROOT / "jobs/clusters/hetero10a.toml")
    s = balanced(c, 64)
    five = sim(c, s, replace(EXACT, iterations=5)).iteration_times_s
    three = sim(c, s, replace(EXACT, steady_state=True)).iteration_times_s
    np.testing.assert_allclose(three, five[1:4], rtol=1e-9)
    assert five[0] != pytest.approx(five[2], rel=1e-3)


def test_the_messages_are_the_plans():
    from hpcps.ps.plan import MessagePlan
    from hpcps.sim.engine import _Run
    c = load_cluster(ROOT / "jobs/clusters/hetero8.toml")
    pl = balanced(c, 64).to_rank_schedule()
    run = _Run(c, pl, QUARTERS, MACHINE, replace(EXACT, bucket_mb=0.1))
    plan = MessagePlan.build(QUARTERS.params, pl.schedule.servers, [w.rank for w in pl.schedule.workers],
                             bucket_bytes=int(0.1 * 2 ** 20))
    msgs = plan.messages()
    assert len(plan.pieces) > len(plan.shards) and run.n_template == len(msgs)
    assert [(m.kind == "push", m.piece, m.src, m.dst, m.nbytes) for m in msgs] == \
        list(zip((run.kind == 1).tolist(), run.piece.tolist(), run.src.tolist(), run.dst.tolist(),
                 run.bytes.astype(int).tolist()))


def test_an_idle_node_changes_nothing(hetero8):
    schedule = balanced(hetero8, 64)
    spare = NodeType("spare", 0.25, 1, 0.1, latency_us=1000.0, memory_gb=0.001)
    nodes = list(hetero8.nodes)
    nodes.insert(3, Node("idle", spare))
    bigger = Cluster("bigger", hetero8.types + (spare,), tuple(nodes))
    options = replace(EXACT, noise_sigma=0.1)
    assert sim(bigger, schedule, options) == sim(hetero8, schedule, options)


def test_balanced_beats_naive_on_hetero8(hetero8):
    assert sim(hetero8, balanced(hetero8, 64)).iteration_time_s < sim(hetero8, naive(hetero8, 64)).iteration_time_s


@pytest.mark.parametrize("workload", ["cifar-resnet", "charlm"])
def test_balanced_beats_naive_on_hetero8_with_the_calibrated_profiles(hetero8, workload):
    profiles = load_profiles()
    p = profiles.workload(workload)
    t = {make.__name__: simulate(hetero8, make(hetero8, 64).to_rank_schedule(), p, profiles.machine,
                                 SimOptions(iterations=2)).iteration_time_s for make in (naive, balanced)}
    assert t["balanced"] < t["naive"]


def test_noise_is_seeded_and_mean_one(hetero8):
    s = naive(hetero8, 64)
    a = sim(hetero8, s, replace(EXACT, noise_sigma=0.2, seed=1))
    assert a == sim(hetero8, s, replace(EXACT, noise_sigma=0.2, seed=1))
    assert a != sim(hetero8, s, replace(EXACT, noise_sigma=0.2, seed=2))
    assert a != sim(hetero8, s, EXACT)
    quiet = sim(hetero8, s, replace(EXACT, iterations=1))
    noisy = sim(hetero8, s, replace(EXACT, iterations=400, noise_sigma=0.2))
    ratio = np.mean([n.compute_s / q.compute_s for n, q in zip(noisy.ranks, quiet.ranks)])
    assert ratio == pytest.approx(1.0, abs=0.02)


def test_stragglers_slow_their_steps(hetero8):
    s = naive(hetero8, 64)
    quiet = sim(hetero8, s)
    always = sim(hetero8, s, replace(EXACT, straggler_prob=1.0, straggler_slowdown=3.0))
    for q, a in zip(quiet.ranks, always.ranks):
        assert a.compute_s == pytest.approx(3 * q.compute_s, rel=1e-12)
    some = sim(hetero8, s, replace(EXACT, iterations=50, straggler_prob=0.3))
    assert quiet.iteration_time_s < some.iteration_time_s < always.iteration_time_s
    # A step that does not straggle keeps its time: at a chance too small to draw, every step as without
    # stragglers; at 0.3 with 3x the mean step is 0.7 + 0.3 x 3 = 1.6 times (400 draws: sd 0.05).
    never = sim(hetero8, s, replace(EXACT, straggler_prob=1e-300, straggler_slowdown=3.0))
    for q, n in zip(quiet.ranks, never.ranks):
        assert n.compute_s == pytest.approx(q.compute_s, rel=1e-12)
    some = sim(hetero8, s, replace(EXACT, iterations=50, straggler_prob=0.3, straggler_slowdown=3.0))
    ratio = np.mean([a.compute_s / q.compute_s for q, a in zip(quiet.ranks, some.ranks) if q.compute_s > 0])
    assert 1.4 < ratio < 1.8, ratio


def test_threads_help_until_the_cores_run_out():
    t = NodeType("quad", 1.0, 4, 10.0)
    c = cluster_of((t, ["a"]))

    def compute(*threads):
        s = NodeSchedule((NodePlan("a", True, tuple(NodeWorker(16, th) for th in threads)),))
        return [r.compute_s for r in sim(c, s).ranks]

    one, two, four = compute(1)[0], compute(2)[0], compute(4)[0]
    assert four < two < one
    assert two == pytest.approx(TOY.step_time(16, 2, 4, 2), rel=1e-12)
    # Two workers of four threads on four cores: each gets two cores and pays for oversubscription.
    shared = compute(4, 4)
    assert shared[0] == shared[1] == pytest.approx(two * (1 + TOY.oversubscription), rel=1e-12)
    # Past the cores, more threads only add the oversubscription cost.
    assert compute(8)[0] == pytest.approx(four * (1 + TOY.oversubscription), rel=1e-12)


def test_a_batch_over_the_nodes_memory_is_infeasible():
    small = NodeType("small", 1.0, 2, 10.0, memory_gb=1.0)
    c = cluster_of((small, ["a", "b"]))
    ok = sim(c, naive(c, 200))            # 100 samples of 1 MB each, plus the rank: fits in 1 GB
    assert ok.feasible and ok.status == "ok"
    r = sim(c, naive(c, 1400))
    assert not r.feasible and r.iteration_time_s == math.inf and r.samples_per_s == 0
    assert "out of memory on node a" in r.status and "memory_gb = 1.0" in r.status and "[700]" in r.status
    assert r.to_dict()["iteration_time_s"] is None and r.to_dict()["feasible"] is False


def test_resolution_trades_little_accuracy_for_fewer_events(hetero8):
    s = balanced(hetero8, 64)
    exact = sim(hetero8, s, replace(EXACT, noise_sigma=0.2))
    coarse = sim(hetero8, s, replace(EXACT, noise_sigma=0.2, resolution_s=None))
    assert coarse.iteration_time_s == pytest.approx(exact.iteration_time_s, rel=0.01)


def test_a_thousand_nodes(hetero8):
    nodes = tuple(Node(f"x{i}", hetero8.nodes[i % 8].type) for i in range(1024))
    big = Cluster("big", hetero8.types, nodes)
    r = sim(big, naive(big, 4096), SimOptions(iterations=1))
    assert r.feasible and len(r.ranks) == 1024 and r.n_servers == 1


@pytest.mark.parametrize("bad", [dict(iterations=0), dict(noise_sigma=-1.0), dict(straggler_prob=1.5),
                                 dict(straggler_slowdown=0.5), dict(sharing="fifo"), dict(resolution_s=-1.0)])
def test_bad_options(hetero8, bad):
    with pytest.raises(ValueError):
        sim(hetero8, naive(hetero8, 8), SimOptions(**bad))


def test_more_pieces_than_the_exchange_can_tag_cannot_run():
    c = cluster_of((NodeType("t", 1.0, 2, 10.0), ["a", "b"]))
    r = sim(c, naive(c, 8), replace(EXACT, bucket_mb=1 / 1024), replace(TOY, params=10_000_000))
    assert not r.feasible and "bucket_mb" in r.status and "8191" in r.status
    assert sim(c, naive(c, 8), replace(EXACT, bucket_mb=4.0), replace(TOY, params=10_000_000)).feasible


def test_the_messages_are_the_runtimes_with_each_workers_codec():
    """Pushes at each worker's encoded size, as the runtime's plan has them (hpcps.ps.plan.plan_for_job):
    the job's codec, and a worker's own from the schedule where it names one."""
    from hpcps.config.job import ExchangeConfig, Job, OptimizerConfig, TrainingConfig
    from hpcps.ps.plan import plan_for_job
    from hpcps.sim.engine import _Run, job_options
    c = load_cluster(ROOT / "jobs/clusters/hetero8.toml")
    nodes = [n.name for n in c.nodes]
    own = ["sign", None, "fp16", None, "none", "int8", None, "topk"]
    s = NodeSchedule(tuple(NodePlan(n, i < 2, (NodeWorker(8, 1, codec),))
                           for i, (n, codec) in enumerate(zip(nodes, own))))
    pl = s.to_rank_schedule()
    job = Job("j", "digits", OptimizerConfig("sgd", lr=0.1), TrainingConfig(global_batch=64, iterations=1),
              exchange=ExchangeConfig(codec="int8", pull_codec="bf16", bucket_mb=0.1))
    run = _Run(c, pl, QUARTERS, MACHINE, replace(EXACT, **job_options(job)))
    plan = plan_for_job(job, pl.schedule, QUARTERS.params)
    assert run.bytes.astype(int).tolist() == [m.nbytes for m in plan.messages()]
    raw = BYTES_PER_ELEMENT * QUARTERS.params
    pushed = [sum(m.nbytes for m in plan.messages() if m.kind == "push" and m.src == w.rank)
              for w in pl.schedule.workers]
    assert pushed[4] == raw and pushed[0] < raw / 25 and pushed[1] < raw / 3.9 and pushed[2] == raw // 2
    assert all(m.nbytes == 2 * m.elements for m in plan.pulls())     # bf16 pulls


def test_a_lossy_codec_shortens_a_push_bound_iteration_and_costs_its_calibrated_time():
    """Four workers push into one server's 1 Gbit/s NIC: int8 cuts the pushes' bytes to about a quarter
    (the pulls stay float32) and the iteration with them; the calibrated encode cost per value
    lengthens every worker's step by that cost times the parameters."""
    t = NodeType("t", 1.0, 2, 1.0, latency_us=0.0)
    c = cluster_of((t, ["s", "a", "b", "c", "d"]))
    s = NodeSchedule((NodePlan("s", True, ()),) + tuple(NodePlan(n, False, (NodeWorker(4),)) for n in "abcd"))
    plain = sim(c, s, replace(EXACT, iterations=1))
    int8 = sim(c, s, replace(EXACT, iterations=1, codec="int8"))
    raw = BYTES_PER_ELEMENT * TOY.params
    assert plain.bytes_per_iteration == pytest.approx(8 * raw)
    assert int8.bytes_per_iteration == pytest.approx(4 * raw + 4 * raw / 4, rel=0.01)
    assert int8.iteration_time_s < plain.iteration_time_s
    costly = replace(MACHINE, codec_s_per_element=(("int8", (1e-8, 0.0)),))
    slow = simulate(c, s.to_rank_schedule(), TOY, costly, replace(EXACT, iterations=1, codec="int8"))
    step = {r.node: r.compute_s for r in slow.ranks}
    base = {r.node: r.compute_s for r in int8.ranks}
    assert step["a"] == pytest.approx(base["a"] + 1e-8 * TOY.params, rel=1e-6)
    # A worker on the server's own rank copies its pushes there: nothing to encode.
    own = NodeSchedule((NodePlan("s", True, (NodeWorker(4),)),) + s.nodes[1:])
    cheap = simulate(c, own.to_rank_schedule(), TOY, MACHINE, replace(EXACT, iterations=1, codec="int8"))
    costly_own = simulate(c, own.to_rank_schedule(), TOY, costly, replace(EXACT, iterations=1, codec="int8"))
    assert by_node(costly_own)["s"].compute_s == pytest.approx(by_node(cheap)["s"].compute_s, rel=1e-9)
    assert by_node(costly_own)["a"].compute_s == pytest.approx(by_node(cheap)["a"].compute_s + 1e-8 * TOY.params,
                                                               rel=1e-6)


def test_a_result_says_when_its_codecs_were_charged_nothing_for_want_of_calibration():
    """A lossy codec with no calibrated cost is free in the simulation; the result's notes say so and
    name it, and say nothing once the profile has its cost (or the run uses no lossy codec)."""
    t = NodeType("t", 1.0, 2, 1.0, latency_us=0.0)
    c = cluster_of((t, ["s", "a", "b"]))
    s = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(4, codec="sign"),)),
                      NodePlan("b", False, (NodeWorker(4),))))
    bare = replace(MACHINE, codec_s_per_element=())
    run = simulate(c, s.to_rank_schedule(), TOY, bare, replace(EXACT, iterations=1, codec="int8"))
    assert [n for n in run.notes if "codec" in n] == [
        "has no calibrated cost for codec int8, sign: encoding and decoding counted as free "
        "(benchmarks/calibrate_compute.py measures them on the machine speed 1.0 stands for)"]
    calibrated = replace(MACHINE, codec_s_per_element=(("int8", (1e-9, 1e-9)), ("sign", (1e-9, 1e-9))))
    run = simulate(c, s.to_rank_schedule(), TOY, calibrated, replace(EXACT, iterations=1, codec="int8"))
    assert not [n for n in run.notes if "codec" in n]
    plain = NodeSchedule((s.nodes[0], NodePlan("a", False, (NodeWorker(4),)), s.nodes[2]))
    assert not [n for n in simulate(c, plain.to_rank_schedule(), TOY, bare, replace(EXACT, iterations=1)).notes
                if "codec" in n]
    run = simulate(c, plain.to_rank_schedule(), TOY, bare, replace(EXACT, iterations=1, pull_codec="bf16"))
    assert any("codec bf16:" in n for n in run.notes)


def test_16_bit_pulls_shorten_an_iteration_the_pulls_bound_and_cost_their_calibrated_time():
    """One server's 1 Gbit/s NIC sends four workers their pulls: with int8 pushes the iteration is
    bounded by the float32 pulls, and bf16 pulls halve their bytes and shorten it. The calibrated
    decode cost lengthens each worker's step by that cost times the parameters (every worker decodes
    every piece); the server's encode adds to its update."""
    t = NodeType("t", 1.0, 2, 1.0, latency_us=0.0)
    c = cluster_of((t, ["s", "a", "b", "c", "d"]))
    s = NodeSchedule((NodePlan("s", True, ()),) + tuple(NodePlan(n, False, (NodeWorker(4),)) for n in "abcd"))
    int8 = sim(c, s, replace(EXACT, iterations=3, codec="int8"))
    both = sim(c, s, replace(EXACT, iterations=3, codec="int8", pull_codec="bf16"))
    raw = BYTES_PER_ELEMENT * TOY.params
    assert int8.bytes_per_iteration == pytest.approx(4 * raw + 4 * raw / 4, rel=0.01)
    assert both.bytes_per_iteration == pytest.approx(4 * raw / 2 + 4 * raw / 4, rel=0.01)
    assert both.iteration_time_s < 0.8 * int8.iteration_time_s
    costly = replace(MACHINE, codec_s_per_element=(("bf16", (1e-8, 2e-8)),))
    slow = simulate(c, s.to_rank_schedule(), TOY, costly, replace(EXACT, iterations=3, codec="int8", pull_codec="bf16"))
    assert by_node(slow)["a"].compute_s == pytest.approx(by_node(both)["a"].compute_s + 2e-8 * TOY.params, rel=1e-6)
    assert by_node(slow)["s"].aggregate_s > by_node(both)["s"].aggregate_s + 0.9e-8 * TOY.params
    with pytest.raises(ValueError, match="pull_codec must be one of none, fp16, bf16"):
        replace(EXACT, pull_codec="int8").check()


def test_the_events_a_result_reports_are_every_event_handled():
    """One server, two workers, no noise: each iteration handles the same events (at least each
    worker's step ending), so the count grows by the same number an iteration (here 6; the first
    iteration has 9, its start included)."""
    t = NodeType("t", 1.0, 2, 1.0, latency_us=10.0)
    c = cluster_of((t, ["s", "a", "b"]))
    s = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(4),)),
                      NodePlan("b", False, (NodeWorker(4),))))
    events = {n: sim(c, s, replace(EXACT, iterations=n)).events for n in (1, 2, 3, 4)}
    per = events[2] - events[1]
    assert per >= 2 and events[3] - events[2] == per and events[4] - events[3] == per
    assert events[1] >= per


def test_what_each_node_needs_in_memory_by_hand():
    """Per rank its idle footprint (3e8 bytes); per worker its parameters and gradients (2 x 4 bytes a
    parameter) and its batch's activations (1e6 bytes a sample); per server its shard's values,
    gradient and optimiser state and a receive row per worker: 4 bytes x (3 + workers) a parameter."""
    from hpcps.sim.engine import memory_needed
    t = NodeType("t", 1.0, 2, 1.0)
    c = cluster_of((t, ["s", "a", "b"]))
    s = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(4),)),
                      NodePlan("b", False, (NodeWorker(6),))))
    need = memory_needed(c, s.to_rank_schedule(), TOY, MACHINE)
    p = TOY.params
    np.testing.assert_allclose(need, [3e8 + 4 * p * (3 + 2), 3e8 + 8 * p + 4e6, 3e8 + 8 * p + 6e6], rtol=1e-12)


def test_a_steady_state_run_simulates_one_iteration_before_and_one_after_those_measured():
    from hpcps.sim.engine import simulate_run
    t = NodeType("t", 1.0, 2, 1.0, latency_us=10.0)
    c = cluster_of((t, ["s", "a", "b"]))
    s = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(4),)),
                      NodePlan("b", False, (NodeWorker(6),))))
    for steady, simulated in ((True, 5), (False, 3)):
        result, timeline = simulate_run(c, s.to_rank_schedule(), TOY, MACHINE,
                                        replace(EXACT, iterations=3, steady_state=steady))
        assert timeline.step_start.shape == (simulated, 2) and len(result.iteration_times_s) == 3


@pytest.mark.parametrize("sync, applies", [("bsp", 1), ("ssp", 1), ("asp", 2)])
def test_every_aggregation_of_a_piece_costs_the_fixed_part_over_the_servers_speed(sync, applies):
    """A free server but for aggregate_fixed_s, two workers: under bsp and ssp each of the four pieces
    costs it once an iteration, under asp once for each worker's push applied, at the server's speed
    (0.5 here); with nothing fixed the server's aggregation costs nothing."""
    half = NodeType("half", 0.5, 2, 2 ** 18 * 8 / PIECE_S / 1e9, latency_us=0.0)
    c = cluster_of((half, ["s", "a", "b"]))
    s = NodeSchedule((NodePlan("s", True, ()), NodePlan("a", False, (NodeWorker(22),)),
                      NodePlan("b", False, (NodeWorker(22),))))
    options = replace(EXACT, iterations=4, bucket_mb=0.25, sync=sync, staleness=1 if sync == "ssp" else 0)
    fixed = replace(FREE_SERVER, aggregate_fixed_s=2e-3)
    with_fixed = by_node(simulate(c, s.to_rank_schedule(), QUARTERS, fixed, options))["s"]
    without = by_node(simulate(c, s.to_rank_schedule(), QUARTERS, FREE_SERVER, options))["s"]
    assert with_fixed.aggregate_s == pytest.approx(applies * 4 * 2e-3 / 0.5, rel=1e-9)
    assert without.aggregate_s == 0.0


def test_with_a_fixed_aggregation_cost_more_servers_are_no_longer_free():
    """Two workers, one model piece per server: with per-byte costs only, eight servers on nodes at a
    quarter of the speed aggregate their eighths of the model in half the time one fast server takes
    for all of it; a fixed part per aggregation (what results/aggregate_cost.md measured) makes each
    slow server pay it whole."""
    fast, slow = NodeType("fast", 4.0, 8, 10.0, latency_us=0.0), NodeType("slow", 1.0, 2, 10.0, latency_us=0.0)
    c = cluster_of((fast, ["w1", "w2"]), (slow, [f"s{i}" for i in range(8)]))
    one = NodeSchedule((NodePlan("w1", True, (NodeWorker(16),)), NodePlan("w2", False, (NodeWorker(16),))))
    many = NodeSchedule((NodePlan("w1", False, (NodeWorker(16),)), NodePlan("w2", False, (NodeWorker(16),)),
                         *(NodePlan(f"s{i}", True, ()) for i in range(8))))
    fixed = replace(MACHINE, aggregate_fixed_s=0.8e-3)

    def aggregate(schedule, machine):
        ranks = simulate(c, schedule.to_rank_schedule(), TOY, machine, EXACT).ranks
        return max(r.aggregate_s for r in ranks)

    assert aggregate(many, MACHINE) == pytest.approx(aggregate(one, MACHINE) / 2, rel=1e-3)
    assert aggregate(many, fixed) > aggregate(one, fixed)
    assert aggregate(many, fixed) == pytest.approx(aggregate(many, MACHINE) + 0.8e-3 / 1.0, rel=1e-9)
    assert aggregate(one, fixed) == pytest.approx(aggregate(one, MACHINE) + 0.8e-3 / 4.0, rel=1e-9)
