from pathlib import Path

import pytest

from hpcps.cluster import load_cluster
from hpcps.cluster.placement import (
    NodePlan,
    NodeSchedule,
    NodeWorker,
    balanced,
    load_any_schedule,
    load_node_schedule,
    load_placement,
    naive,
    place_rank_schedule,
    split_proportional,
    write_node_schedule,
)
from hpcps.config import ConfigError
from hpcps.config.schedule import Schedule, WorkerSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hetero8():
    return load_cluster(ROOT / "jobs/clusters/hetero8.toml")


def write(tmp_path, text, name="nodes.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


SCHED = NodeSchedule((NodePlan("n1", True, (NodeWorker(32, 2),)),
                      NodePlan("n3", False, (NodeWorker(8, 1), NodeWorker(8, 4))),
                      NodePlan("n6", True, ()),
                      NodePlan("n7", False, (NodeWorker(16, 1, "int8"),))), "s.toml")


def test_round_trip_through_toml(tmp_path):
    path = tmp_path / "s.toml"
    write_node_schedule(SCHED, path)
    again = load_node_schedule(path)
    assert again.nodes == SCHED.nodes and again.source == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["s.toml"]      # no temporary file left behind


def test_worker_codecs_reach_the_rank_schedule(tmp_path):
    ranks = SCHED.to_rank_schedule().schedule
    assert [w.codec for w in ranks.workers] == [None, None, None, "int8"]
    assert SCHED.to_dict()["nodes"][3]["workers"] == [{"batch": 16, "threads": 1, "codec": "int8"}]
    with pytest.raises(ConfigError) as e:
        load_node_schedule(write(tmp_path, '[[nodes]]\nname = "n1"\nserver = true\n'
                                           'workers = [{batch = 32, codec = "fp8"}]\n'))
    assert e.value.key == "nodes[0].workers[0].codec" and "none, fp16, bf16, int8, sign" in str(e.value)


def test_the_documented_example_parses(tmp_path):
    s = load_node_schedule(write(tmp_path, '[[nodes]]\nname = "n1"\nserver = true\n'
                                           'workers = [{batch = 32, threads = 2}]\n'
                                           '[[nodes]]\nname = "n2"\nworkers = [{batch = 16}, {batch = 16}]\n'))
    assert s.nodes == (NodePlan("n1", True, (NodeWorker(32, 2),)),
                       NodePlan("n2", False, (NodeWorker(16, 1), NodeWorker(16, 1))))
    assert s.global_batch == 64 and s.n_ranks == 3


def test_conversion_numbers_ranks_node_by_node():
    p = SCHED.to_rank_schedule()
    # n1: rank 0 (worker + server); n3: ranks 1, 2; n6: rank 3 (server only); n7: rank 4
    assert p.rank_nodes == ("n1", "n3", "n3", "n6", "n7")
    assert p.schedule.servers == (0, 3)
    assert p.schedule.workers == (WorkerSpec(0, 32, 2), WorkerSpec(1, 8, 1), WorkerSpec(2, 8, 4),
                                  WorkerSpec(4, 16, 1, "int8"))
    assert p.n_ranks == SCHED.n_ranks == 5
    assert p.schedule.global_batch == SCHED.global_batch == 64
    p.schedule.check_against(p.n_ranks, 64)


def test_a_server_shares_the_rank_of_its_nodes_first_worker():
    s = NodeSchedule((NodePlan("a", False, (NodeWorker(1),)), NodePlan("b", True, (NodeWorker(2), NodeWorker(3)))))
    p = s.to_rank_schedule()
    assert p.schedule.servers == (1,) and p.rank_nodes == ("a", "b", "b")


def test_check_against_the_cluster_and_batch(hetero8):
    SCHED.check_against(hetero8, 64)
    with pytest.raises(ConfigError) as e:
        SCHED.check_against(hetero8, 65)
    assert "sum to 64" in str(e.value) and "65" in str(e.value)
    bad = NodeSchedule((NodePlan("n99", True, (NodeWorker(4),)),), "b.toml")
    with pytest.raises(ConfigError) as e:
        bad.check_against(hetero8)
    assert e.value.key == "nodes[0].name" and "'n99' is not in cluster 'hetero8'" in str(e.value)
    assert "n1, n2" in str(e.value)


@pytest.mark.parametrize("text, key, words", [
    ("[[nodes]]\nname = 'n1'\nserver = true\n", "nodes.workers", "no worker"),
    ("[[nodes]]\nname = 'n1'\nworkers = [{batch = 4}]\n", "nodes.server", "no parameter server"),
    ("nodes = []\n", "nodes.server", "no parameter server"),
    ("[[nodes]]\nname = 'n1'\nserver = true\nworkers = [{batch = 0}]\n", "nodes[0].workers[0].batch", "> 0"),
    ("[[nodes]]\nname = 'n1'\nserver = true\nworkers = [{batch = 4, threads = 0}]\n",
     "nodes[0].workers[0].threads", "> 0"),
    ("[[nodes]]\nname = 'n1'\nserver = true\nworkers = [{batch = 4.5}]\n", "nodes[0].workers[0].batch", "integer"),
    ("[[nodes]]\nname = 'n1'\nserver = 'yes'\nworkers = [{batch = 4}]\n", "nodes[0].server", "boolean"),
    ("[[nodes]]\nname = 'n1'\nserver = true\nworkers = [{batch = 4, gpu = 1}]\n", "nodes[0].workers[0].gpu",
     "Valid keys are: batch (required), threads (default 1)"),
    ("[[nodes]]\nname = 'n1'\nserver = true\nworkers = [4]\n", "nodes[0].workers[0]", "must be a table"),
    ("[[nodes]]\nname = 'n1'\nserver = true\nworkers = {batch = 4}\n", "nodes[0].workers", "must be an array"),
    ("[[nodes]]\nname = 'n1'\nservers = true\nworkers = [{batch = 4}]\n", "nodes[0].servers",
     "Valid keys are: name (required), server (default False), workers (default [])"),
    ("[[nodes]]\nserver = true\nworkers = [{batch = 4}]\n", "nodes[0].name", "is required"),
    ("[[nodes]]\nname = 'n1'\nserver = true\nworkers = [{batch = 4}]\n[[nodes]]\nname = 'n1'\n",
     "nodes[1].name", "listed twice"),
    ("cluster = 'x'\n[[nodes]]\nname = 'n1'\nserver = true\nworkers = [{batch = 4}]\n", "cluster",
     "Valid keys are: nodes"),
])
def test_bad_node_schedules_name_the_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_node_schedule(path)
    assert e.value.key == key
    assert str(path) in str(e.value) and words in str(e.value)


def test_either_kind_of_schedule_file_places_on_a_cluster(tmp_path, hetero8):
    nodes = write(tmp_path, SCHED.to_toml())
    assert isinstance(load_any_schedule(nodes), NodeSchedule)
    placed, expected = load_placement(nodes, hetero8, 64), SCHED.to_rank_schedule()
    assert placed.rank_nodes == expected.rank_nodes
    assert (placed.schedule.servers, placed.schedule.workers) == (expected.schedule.servers, expected.schedule.workers)
    ranks = write(tmp_path, Schedule((0,), (WorkerSpec(0, 4), WorkerSpec(1, 4), WorkerSpec(9, 4))).to_toml(), "r.toml")
    assert isinstance(load_any_schedule(ranks), Schedule)
    p = load_placement(ranks, hetero8, 12)
    assert p.rank_nodes == ("n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n1", "n2")   # round robin
    with pytest.raises(ConfigError, match="sum to 12"):
        load_placement(ranks, hetero8, 13)


def test_rank_schedules_fill_one_rank_per_node_first(hetero8):
    s = Schedule((0,), tuple(WorkerSpec(r, 1) for r in range(3)))
    assert place_rank_schedule(s, hetero8).rank_nodes == ("n1", "n2", "n3")


def test_naive(hetero8):
    s = naive(hetero8, 64)
    assert [p.name for p in s.nodes] == list(hetero8.names)
    assert [p.server for p in s.nodes] == [True] + [False] * 7
    assert all(p.workers == (NodeWorker(8, 1),) for p in s.nodes)
    s.check_against(hetero8, 64)
    small = naive(hetero8, 3)
    assert [p.name for p in small.nodes] == ["n1", "n2", "n3"] and small.global_batch == 3


def test_balanced_follows_speed_and_network(hetero8):
    s = balanced(hetero8, 64)
    s.check_against(hetero8, 64)
    batch = {p.name: sum(w.batch for w in p.workers) for p in s.nodes}
    assert batch == {"n1": 22, "n2": 22, "n3": 6, "n4": 6, "n5": 5, "n6": 1, "n7": 1, "n8": 1}
    assert {p.name for p in s.nodes if p.server} == {"n1", "n2"}           # the two 10 Gb/s nodes
    b10 = balanced(load_cluster(ROOT / "jobs/clusters/hetero10b.toml"), 100)
    assert "io1" in {p.name for p in b10.nodes if p.server}                # the one fast link, listed last


def test_split_proportional():
    assert split_proportional(10, [1, 1, 1]) == [4, 3, 3]
    assert split_proportional(64, [4, 4, 1, 1, 1, 0.5, 0.5, 0.5]) == [20, 20, 5, 5, 5, 3, 3, 3]
    assert split_proportional(0, [1, 2]) == [0, 0]
    assert sum(split_proportional(1001, [0.3, 2.2, 7.1])) == 1001
    with pytest.raises(ValueError):
        split_proportional(5, [0, 0])


def test_threads_are_bounded_by_the_node_cores(hetero8, tmp_path):
    # n6 is a cpu-slow node with 2 cores: at most 4 x 2 threads; 100000 used to exhaust the process limit.
    ok = write(tmp_path, '[[nodes]]\nname = "n6"\nserver = true\nworkers = [{batch = 64, threads = 8}]\n')
    load_placement(ok, hetero8, 64)
    many = write(tmp_path, '[[nodes]]\nname = "n6"\nserver = true\nworkers = [{batch = 64, threads = 9}]\n')
    with pytest.raises(ConfigError) as e:
        load_placement(many, hetero8, 64)
    assert e.value.key == "nodes[0].workers[0].threads" and "must be <= 8 on node n6" in str(e.value)
    ranks = write(tmp_path, "servers = [0]\n[[workers]]\nrank = 5\nbatch = 64\nthreads = 9\n", "ranks.toml")
    with pytest.raises(ConfigError) as e:
        load_placement(ranks, hetero8, 64)          # rank 5 stands for n6
    assert e.value.key == "workers[0].threads" and "on node n6" in str(e.value)


def test_node_schedule_text_reads_back_with_tomllib():
    import tomllib
    assert tomllib.loads(SCHED.to_toml()) == SCHED.to_dict()
