from pathlib import Path

import numpy as np
import pytest

from hpcps.cluster import load_cluster
from hpcps.cluster.placement import NodeSchedule, balanced, naive
from hpcps.tune.space import InfeasibleSchedule, ScheduleSpace

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hetero8():
    return load_cluster(ROOT / "jobs/clusters/hetero8.toml")


def canonical(s: NodeSchedule):
    return sorted((p.name, p.server, p.workers) for p in s.nodes)


@pytest.mark.parametrize("make", [naive, balanced])
def test_schedule_point_schedule_round_trip(hetero8, make):
    space = ScheduleSpace(hetero8, 128)
    schedule = make(hetero8, 128)
    point = space.encode(schedule)
    assert point.shape == (space.n_dims,) == (32,)
    assert canonical(space.decode(point)) == canonical(schedule)


def test_random_points_repair_to_valid_schedules(hetero8):
    space = ScheduleSpace(hetero8, 100, max_batch=(200,) * 8)
    for point in space.random_points(200, np.random.default_rng(0)):
        s = space.decode(point)
        assert s.global_batch == 100
        assert any(p.server for p in s.nodes) and any(p.workers for p in s.nodes)
        assert all(w.batch >= 1 for p in s.nodes for w in p.workers)
        # repair is idempotent: a repaired point decodes to the same schedule
        assert canonical(space.decode(space.repair(point))) == canonical(s)


def test_repair_adds_a_server_on_the_best_connected_node_and_a_worker_on_the_fastest(hetero8):
    space = ScheduleSpace(hetero8, 64)
    s = space.decode(np.zeros(space.n_dims))
    assert [p.name for p in s.nodes if p.server] == ["n1"]       # gpu-fast: 10 Gb/s, first in file order
    assert [(p.name, p.workers[0].batch) for p in s.nodes if p.workers] == [("n1", 64)]


def test_memory_caps_move_samples_to_nodes_with_room(hetero8):
    caps = (1000, 1000, 1000, 1000, 1000, 5, 5, 5)            # the slow nodes hold 5 samples each
    space = ScheduleSpace(hetero8, 80, max_batch=caps)
    s = space.decode(space.encode(naive(hetero8, 80)))          # naive gives every node 10
    batches = {p.name: p.workers[0].batch for p in s.nodes if p.workers}
    assert all(batches[n] <= 5 for n in ("n6", "n7", "n8"))
    assert sum(batches.values()) == 80


def test_a_batch_that_fits_nowhere_is_rejected(hetero8):
    space = ScheduleSpace(hetero8, 80, max_batch=(5,) * 8)
    with pytest.raises(InfeasibleSchedule, match="memory holds 40 samples"):
        space.decode(space.encode(naive(hetero8, 80)))


def test_more_workers_than_samples_keeps_the_largest_shares(hetero8):
    space = ScheduleSpace(hetero8, 3)
    point = space.encode(naive(hetero8, 8))
    s = space.decode(point)
    assert s.global_batch == 3 and sum(1 for p in s.nodes if p.workers) == 3


def test_parameter_space_matches_the_encoding(hetero8):
    space = ScheduleSpace(hetero8, 64)
    ps = space.parameter_space()
    assert ps.dimensionality == space.n_dims
    assert ps.check_points_in_domain(space.encode(balanced(hetero8, 64))[None, :]).all()


def test_decode_many_reads_points_as_decode_does(hetero8):
    from hpcps.tune.space import decode_many
    space = ScheduleSpace(hetero8, 64, max_batch=(64, 64, 64, 64, 64, 6, 6, 6))
    points = np.array([space.repair(p) for p in space.random_points(100, np.random.default_rng(1))])
    d = decode_many(space, points)
    for row, p in enumerate(points):
        s = space.decode(p)
        batches = np.zeros(8)
        servers = np.zeros(8, bool)
        for plan in s.nodes:
            i = hetero8.index(plan.name)
            servers[i] = plan.server
            batches[i] = plan.workers[0].batch if plan.workers else 0
        np.testing.assert_allclose(d.batches[row], batches, atol=1e-9)
        assert (d.servers[row] == servers).all()
    assert d.feasible.all()


def test_workers_that_cannot_hold_the_batch_get_help_from_the_fastest_nodes_with_room(hetero8):
    from hpcps.tune.space import decode_many
    caps = (10, 10, 64, 64, 64, 4, 4, 4)
    space = ScheduleSpace(hetero8, 64, max_batch=caps)
    point = np.zeros((8, 4))
    point[:, 3] = 1
    point[7, 0] = 1
    point[[0, 5], 1] = 1                       # a worker on n1 and one on n6: they hold 14 samples
    point[[0, 5], 2] = 0.5
    s = space.decode(point.reshape(-1))
    batches = {p.name: p.workers[0].batch for p in s.nodes if p.workers}
    assert sum(batches.values()) == 64
    assert all(batches[n] <= caps[hetero8.index(n)] for n in batches)
    assert "n2" in batches and "n3" in batches          # the next fastest nodes (speed 4, then 1)
    d = decode_many(space, point.reshape(1, -1))
    assert d.feasible[0] and d.batches[0].sum() == pytest.approx(64)
    assert (d.batches[0] <= np.array(caps) + 1e-9).all()


# -- codecs as a knob (hpcps.tune --codecs) ----------------------------------------------------------

CODECS = ("none", "fp16", "int8")


def test_a_space_without_codec_choice_has_four_parameters_a_node_and_names_no_codec(hetero8):
    space = ScheduleSpace(hetero8, 64)
    assert not space.tunes_codecs and space.n_fields == 4 and space.n_dims == 32
    for point in space.random_points(50, np.random.default_rng(3)):
        assert all(w.codec is None for p in space.decode(point).nodes for w in p.workers)


def test_codecs_round_trip_through_points(hetero8):
    from hpcps.cluster.placement import NodePlan, NodeWorker
    space = ScheduleSpace(hetero8, 64, codecs=CODECS)
    assert space.tunes_codecs and space.n_fields == 5 and space.n_dims == 40
    schedule = NodeSchedule((NodePlan("n1", True, (NodeWorker(32, 2, "int8"),)),
                             NodePlan("n2", False, (NodeWorker(16, 1),)),
                             NodePlan("n6", True, (NodeWorker(16, 1, "fp16"),))))
    point = space.encode(schedule)
    assert list(point.reshape(8, 5)[[0, 1, 5], 4]) == [2, 0, 1]
    back = space.decode(point)
    assert canonical(back) == canonical(schedule)
    # The job's own codec is left unnamed, as in a schedule without codecs: naming it encodes the same.
    named = NodeSchedule((NodePlan("n1", True, (NodeWorker(64, 1, "none"),)),))
    assert space.decode(space.encode(named)).nodes[0].workers[0].codec is None
    ps = space.parameter_space()
    assert ps.dimensionality == space.n_dims
    assert [p.name for p in ps.parameters[:5]] == ["server_0", "worker_0", "share_0", "threads_0", "codec_0"]
    assert ps.check_points_in_domain(point[None, :]).all()


def test_a_codec_the_space_does_not_offer_is_refused(hetero8):
    from hpcps.cluster.placement import NodePlan, NodeWorker
    space = ScheduleSpace(hetero8, 64, codecs=("none", "int8"))
    with pytest.raises(ValueError, match="codec 'sign' is not one this run may choose"):
        space.encode(NodeSchedule((NodePlan("n1", True, (NodeWorker(64, 1, "sign"),)),)))
    with pytest.raises(ValueError, match="distinct"):
        ScheduleSpace(hetero8, 64, codecs=("none", "none"))


def test_random_codec_points_repair_and_decode_many_as_decode_does(hetero8):
    from hpcps.tune.space import decode_many
    space = ScheduleSpace(hetero8, 64, max_batch=(64, 64, 64, 64, 64, 6, 6, 6), codecs=CODECS)
    points = space.random_points(200, np.random.default_rng(4))
    used = set()
    for p in points:
        s = space.decode(p)
        assert canonical(space.decode(space.repair(p))) == canonical(s)
        used |= {w.codec for plan in s.nodes for w in plan.workers}
    assert used == {None, "fp16", "int8"}
    repaired = np.array([space.repair(p) for p in points])
    d = decode_many(space, repaired)
    for row, p in enumerate(repaired):
        want = np.zeros(8, int)
        for plan in space.decode(p).nodes:
            if plan.workers:
                want[hetero8.index(plan.name)] = CODECS.index(plan.workers[0].codec or "none")
        assert (d.codecs[row] == want).all()


def test_neighbours_change_codecs_only_where_the_space_has_them(hetero8):
    from hpcps.tune.strategies import neighbour
    rng = np.random.default_rng(5)
    plain = ScheduleSpace(hetero8, 64)
    start = plain.encode(naive(hetero8, 64))
    assert all(neighbour(plain, start, rng).shape == start.shape for _ in range(50))
    space = ScheduleSpace(hetero8, 64, codecs=CODECS)
    start = space.encode(naive(hetero8, 64))
    codecs = {w.codec for _ in range(200) for p in space.decode(neighbour(space, start, rng)).nodes
              for w in p.workers}
    assert codecs == {None, "fp16", "int8"}


# -- the synchronisation as a knob ------------------------------------------------------------------

SYNCS = ("bsp", "ssp1", "ssp2", "asp")


def test_a_space_without_sync_choice_has_no_sync_parameter_and_draws_as_before(hetero8):
    plain, one = ScheduleSpace(hetero8, 64), ScheduleSpace(hetero8, 64, syncs=("asp",))
    assert not plain.tunes_syncs and not one.tunes_syncs and plain.n_dims == one.n_dims == 32
    np.testing.assert_array_equal(plain.random_points(20, np.random.default_rng(3)),
                                  one.random_points(20, np.random.default_rng(3)))
    assert plain.sync_of(plain.encode(naive(hetero8, 64))) == "bsp" and one.sync_of(np.zeros(32)) == "asp"


def test_syncs_round_trip_through_points(hetero8):
    space = ScheduleSpace(hetero8, 64, syncs=SYNCS)
    assert space.n_dims == 33 and [p.name for p in space.parameter_space().parameters][-1] == "sync"
    for sync in SYNCS:
        point = space.encode(naive(hetero8, 64), sync)
        assert point.shape == (33,) and space.sync_of(point) == sync
        assert space.sync_of(space.repair(point)) == sync
        assert canonical(space.decode(point)) == canonical(naive(hetero8, 64))
    assert space.sync_of(space.encode(naive(hetero8, 64))) == "bsp"          # the job's, first
    with pytest.raises(ValueError, match="sync 'ssp3' is not one this run may choose"):
        space.encode(naive(hetero8, 64), "ssp3")


def test_random_sync_points_draw_every_sync_and_decode_many_reads_them(hetero8):
    from hpcps.tune.space import decode_many
    space = ScheduleSpace(hetero8, 64, syncs=SYNCS)
    pts = space.random_points(100, np.random.default_rng(1))
    d = decode_many(space, pts)
    assert set(d.syncs) == {0, 1, 2, 3}
    assert [SYNCS[k] for k in d.syncs] == [space.sync_of(p) for p in pts]
    # The node parameters are those of a space without syncs.
    plain = decode_many(ScheduleSpace(hetero8, 64), pts[:, :-1])
    np.testing.assert_array_equal(d.batches, plain.batches)


def test_neighbours_change_the_sync_only_where_the_space_has_it(hetero8):
    from hpcps.tune.strategies import neighbour, schedule_key
    rng = np.random.default_rng(5)
    space = ScheduleSpace(hetero8, 64, syncs=SYNCS)
    start = space.encode(naive(hetero8, 64))
    assert {space.sync_of(neighbour(space, start, rng)) for _ in range(200)} == set(SYNCS)
    # The sync is part of what identifies a schedule.
    assert schedule_key(space, start) != schedule_key(space, space.encode(naive(hetero8, 64), "asp"))


def test_the_syncs_of_a_problem_are_the_jobs_first_then_from_the_most_synchronous():
    from hpcps.tune.problem import space_syncs
    assert space_syncs("bsp") == ("bsp",)
    assert space_syncs("asp", ["asp", "ssp10", "bsp", "ssp2"]) == ("asp", "bsp", "ssp2", "ssp10")
    assert space_syncs("ssp1", ["bsp", "asp", "ssp1"]) == ("ssp1", "bsp", "asp")
