"""Rank-to-node mapping under Slurm (faked SLURM_* environment), host names, and emulation."""

from pathlib import Path

import pytest

from hpcps.cluster import load_cluster
from hpcps.cluster.mapping import choose_mode, local_node_name, place
from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker
from hpcps.config.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    return load_cluster(ROOT / "jobs/clusters/hetero8.toml")


SCHED = NodeSchedule((NodePlan("n1", True, (NodeWorker(40, 4),)),
                      NodePlan("n3", False, (NodeWorker(12, 2), NodeWorker(12, 2))),
                      NodePlan("n6", True, ())), "s.toml")


def test_slurm_node_name_comes_from_the_environment():
    assert local_node_name({"SLURMD_NODENAME": "n3", "SLURM_JOB_ID": "12"}) == ("n3", "slurm")
    name, how = local_node_name({})
    assert how == "hosts" and name


def test_auto_mode(cluster):
    assert choose_mode("auto", ["n1", "n3"], ["slurm", "slurm"], cluster) == "slurm"
    assert choose_mode("auto", ["n1", "n3"], ["hosts", "hosts"], cluster) == "hosts"
    assert choose_mode("auto", ["laptop", "laptop"], ["hosts", "hosts"], cluster) == "emulate"
    assert choose_mode("emulate", ["n1"], ["slurm"], cluster) == "emulate"


def test_emulation_numbers_ranks_node_by_node(cluster):
    p = place(SCHED, cluster, "emulate", ["here"] * 4)
    assert p.rank_nodes == ("n1", "n3", "n3", "n6")
    assert p.schedule.servers == (0, 3)
    assert [(w.rank, w.batch, w.threads) for w in p.schedule.workers] == [(0, 40, 4), (1, 12, 2), (2, 12, 2)]
    with pytest.raises(ConfigError, match="needs 4 ranks .* 5 were launched"):
        place(SCHED, cluster, "emulate", ["here"] * 5)


def test_launcher_placement_gives_roles_to_the_ranks_found_on_each_node(cluster):
    # srun placed ranks round-robin: rank 0 on n3, 1 on n1, 2 on n6, 3 on n3
    p = place(SCHED, cluster, "slurm", ["n3", "n1", "n6", "n3"])
    assert p.rank_nodes == ("n3", "n1", "n6", "n3")
    assert p.schedule.servers == (1, 2)
    assert [(w.rank, w.batch) for w in p.schedule.workers] == [(0, 12), (1, 40), (3, 12)]


def test_too_few_ranks_on_a_node_is_an_error(cluster):
    with pytest.raises(ConfigError, match="node n3 needs 2 rank"):
        place(SCHED, cluster, "hosts", ["n1", "n3", "n6"])
    with pytest.raises(ConfigError, match="not a node of cluster"):
        place(SCHED, cluster, "hosts", ["n1", "n3", "n3", "elsewhere"])
