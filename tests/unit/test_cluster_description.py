import math
from pathlib import Path

import pytest

from hpcps.cluster import Cluster, Node, NodeType, load_cluster
from hpcps.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = sorted((ROOT / "jobs" / "clusters").glob("*.toml"))

GOOD = """
name = "t"
[types.fast]
speed = 4.0
cores = 8
nic_gbps = 10.0
latency_us = 20.0
fixed_ms = 2.0
memory_gb = 16.0
gpus = 1

[types.slow]
speed = 0.5
cores = 2
nic_gbps = 1

[[nodes]]
names = "n[1-2]"
type = "fast"

[[nodes]]
names = "n[3-4],x"
type = "slow"
"""


def write(tmp_path, text, name="cluster.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_good_file_loads_with_defaults(tmp_path):
    c = load_cluster(write(tmp_path, GOOD))
    assert c.name == "t" and len(c) == 5
    assert c.names == ("n1", "n2", "n3", "n4", "x")
    fast, slow = c.node("n1").type, c.node("x").type
    assert (fast.speed, fast.cores, fast.nic_gbps, fast.latency_us, fast.fixed_ms, fast.memory_gb, fast.gpus) == \
        (4.0, 8, 10.0, 20.0, 2.0, 16.0, 1)
    assert (slow.latency_us, slow.fixed_ms, slow.memory_gb, slow.gpus) == (50.0, 0.0, None, 0)
    assert slow.nic_gbps == 1.0 and isinstance(slow.nic_gbps, float)
    assert slow.memory_bytes == math.inf and fast.memory_bytes == 16e9
    assert slow.nic_bytes_per_s == 1e9 / 8
    assert c.index("n3") == 2 and c.has("x") and not c.has("n9")


def test_the_name_defaults_to_the_file_name(tmp_path):
    c = load_cluster(write(tmp_path, GOOD.replace('name = "t"', ""), "mine.toml"))
    assert c.name == "mine"


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_clusters_load_and_round_trip(tmp_path, path):
    c = load_cluster(path)
    assert c.name == path.stem
    assert all(0.25 <= n.type.speed <= 8 for n in c.nodes)
    again = load_cluster(write(tmp_path, c.to_toml()))
    assert again.types == c.types and again.nodes == c.nodes and again.name == c.name


def test_bundled_cluster_shapes():
    sizes = {p.stem: len(load_cluster(p)) for p in BUNDLED}
    assert sizes["uniform4"] == 4 and sizes["hetero8"] == 8
    assert sum(1 for n, s in sizes.items() if s == 10 and n.startswith("hetero")) >= 2
    assert sizes["large128"] >= 64
    h = load_cluster(ROOT / "jobs/clusters/hetero8.toml")
    assert len({n.type.speed for n in h.nodes}) >= 3 and len({n.type.nic_gbps for n in h.nodes}) >= 2


BAD = [
    # (change to GOOD, key, words in the message)
    (("speed = 0.5", "speed = 0.0"), "types.slow.speed", ">= 0.0001"),
    (("speed = 0.5", "speed = -1.0"), "types.slow.speed", ">= 0.0001"),
    (("speed = 0.5", "speed = nan"), "types.slow.speed", "finite"),
    (("speed = 0.5", "speed = inf"), "types.slow.speed", "finite"),
    (("speed = 0.5", 'speed = "fast"'), "types.slow.speed", "must be a number"),
    (("cores = 2", "cores = 0"), "types.slow.cores", "> 0"),
    (("cores = 2", "cores = 2.5"), "types.slow.cores", "must be an integer"),
    (("cores = 2", "cores = true"), "types.slow.cores", "must be an integer"),
    (("nic_gbps = 1\n", "nic_gbps = 0\n"), "types.slow.nic_gbps", ">= 0.001 and <= 100000"),
    (("nic_gbps = 1\n", "nic_gbps = -2.5\n"), "types.slow.nic_gbps", ">= 0.001"),
    # Past these the simulator's bandwidth sums overflowed to inf and NaN and it never finished.
    (("nic_gbps = 1\n", "nic_gbps = 1e300\n"), "types.slow.nic_gbps", "<= 100000, got 1e+300"),
    (("nic_gbps = 1\n", "nic_gbps = inf\n"), "types.slow.nic_gbps", "finite"),
    (("speed = 0.5", "speed = 1e300"), "types.slow.speed", "<= 10000"),
    (("cores = 2", "cores = 100000"), "types.slow.cores", "<= 4096"),
    (("latency_us = 20.0", "latency_us = 1e30"), "types.fast.latency_us", "<= 1e+07"),
    (("memory_gb = 16.0", "memory_gb = nan"), "types.fast.memory_gb", "finite"),
    (("latency_us = 20.0", "latency_us = -1.0"), "types.fast.latency_us", ">= 0"),
    (("fixed_ms = 2.0", "fixed_ms = -1.0"), "types.fast.fixed_ms", ">= 0"),
    (("memory_gb = 16.0", "memory_gb = 0.0"), "types.fast.memory_gb", "> 0"),
    (("gpus = 1", "gpus = -1"), "types.fast.gpus", ">= 0"),
    (("gpus = 1", "gpus = 1\ncolour = 'red'"), "types.fast.colour",
     "Valid keys are: speed (required), cores (required), nic_gbps (required), latency_us (default 50.0)"),
    (("nic_gbps = 1\n", ""), "types.slow.nic_gbps", "is required"),
    (("speed = 0.5\n", ""), "types.slow.speed", "is required"),
    (("cores = 2\n", ""), "types.slow.cores", "is required"),
    (('name = "t"', 'name = "t"\nowner = "me"'), "owner", "Valid keys are: name"),
    (('name = "t"', "name = 3"), "name", "must be a string"),
    (('type = "slow"', 'type = "medium"'), "nodes[1].type", "unknown node type 'medium'; the file defines fast, slow"),
    (('names = "n[3-4],x"', 'names = "n[3-4],n1"'), "nodes[1].names", "node 'n1' is named twice (also in nodes[0])"),
    (('names = "n[3-4],x"', 'names = "n[3-4],n3"'), "nodes[1].names", "earlier in the same entry"),
    (('names = "n[3-4],x"', 'names = "n[4-3]"'), "nodes[1].names", "backwards"),
    (('names = "n[3-4],x"', 'names = ""'), "nodes[1].names", "empty hostlist"),
    (('names = "n[3-4],x"', "names = 3"), "nodes[1].names", "must be a string"),
    (('type = "slow"', 'type = "slow"\nrack = 2'), "nodes[1].rack",
     "Valid keys are: names (required), type (required)"),
    (('names = "n[3-4],x"\n', ""), "nodes[1].names", "is required"),
    (('[[nodes]]\nnames = "n[3-4],x"\ntype = "slow"\n', ""), None, None),   # fine: fewer nodes
]


@pytest.mark.parametrize("change, key, words", BAD, ids=[str(b[1]) + ":" + b[0][1][:20] for b in BAD])
def test_bad_cluster_files_name_the_file_and_key(tmp_path, change, key, words):
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    if key is None:
        load_cluster(path)
        return
    with pytest.raises(ConfigError) as e:
        load_cluster(path)
    assert e.value.key == key
    assert str(path) in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("text, key, words", [
    ('[[nodes]]\nnames = "a"\ntype = "x"\n', "types", "is required"),
    ('types = {}\n[[nodes]]\nnames = "a"\ntype = "x"\n', "types", "no node type"),
    ("[types.x]\nspeed = 1.0\ncores = 1\nnic_gbps = 1.0\n", "nodes", "is required"),
    ("nodes = []\n[types.x]\nspeed = 1.0\ncores = 1\nnic_gbps = 1.0\n", "nodes", "no node"),
    ("types = 3\nnodes = []\n", "types", "must be a table"),
    ('nodes = ["a"]\n[types.x]\nspeed = 1.0\ncores = 1\nnic_gbps = 1.0\n', "nodes[0]", "must be a table"),
    ("[types]\nx = 3\n[[nodes]]\nnames = 'a'\ntype = 'x'\n", "types.x", "must be a table"),
])
def test_structural_errors(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_cluster(path)
    assert e.value.key == key and words in str(e.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_cluster(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_cluster(write(tmp_path, "name = \n"))


def test_clusters_built_in_code_also_refuse_repeated_names():
    t = NodeType("x", 1.0, 1, 1.0)
    with pytest.raises(ValueError, match="repeat"):
        Cluster("c", (t,), (Node("a", t), Node("a", t)))
