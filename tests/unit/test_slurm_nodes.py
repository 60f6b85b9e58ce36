"""Hostlists and the starting cluster file written from Slurm's nodes (python -m hpcps.cluster --from-slurm)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcps.cluster import load_cluster
from hpcps.cluster.hostlist import expand_hostlist
from hpcps.slurm.nodes import allocation_nodes, compress_hostlist, render_cluster_toml, unknown_nodes
from hpcps.slurm.parse import parse_nodes
from tests.unit.golden import check_golden
from tests.unit.test_slurm_parse import NODES_SITE

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("names,hostlist", [
    (["n1", "n2", "n3", "n7"], "n[1-3,7]"),
    (["n3", "n1", "n2"], "n[1-3]"),
    (["gpu01", "gpu02", "gpu10"], "gpu[01-02,10]"),
    (["n8", "n9", "n10", "n11"], "n[8-11]"),
    (["login", "n1"], "login,n1"),
    (["a1", "b1", "a2", "a2"], "a[1-2],b1"),
    (["rack1-n01", "rack1-n02"], "rack1-n[01-02]"),
    (["n01", "n1"], "n[01,1]"),
])
def test_compress_hostlist(names, hostlist):
    assert compress_hostlist(names) == hostlist
    assert sorted(expand_hostlist(hostlist)) == sorted(set(names))


def test_starting_cluster_file_from_the_local_test_cluster_matches_hetero8():
    nodes = parse_nodes((DATA / "scontrol_nodes_hetero8.txt").read_text())
    text = render_cluster_toml(nodes, "hetero8-from-slurm")
    check_golden("cluster_from_slurm_hetero8.toml", text)
    path = DATA.parent / "golden" / "cluster_from_slurm_hetero8.toml"
    got, want = load_cluster(path), load_cluster(ROOT / "jobs" / "clusters" / "hetero8.toml")
    assert got.names == want.names
    for a, b in zip(got.nodes, want.nodes):
        assert (a.type.name, a.type.cores, a.type.memory_gb, a.type.gpus) == \
               (b.type.name, b.type.cores, b.type.memory_gb, b.type.gpus)
        assert a.type.speed == 1.0   # placeholder


def test_starting_cluster_file_groups_nodes_without_features(tmp_path):
    nodes = parse_nodes(NODES_SITE)
    text = render_cluster_toml(nodes, 'site "A"')
    check_golden("cluster_from_slurm_site.toml", text)
    out = tmp_path / "c.toml"
    out.write_text(text)
    c = load_cluster(out)
    assert c.name == 'site "A"'
    assert [(n.name, n.type.name, n.type.gpus) for n in c.nodes] == [("gpu01", "a100-ib", 4),
                                                                      ("cpu001", "cpu128-mem268g", 0)]


def test_unknown_nodes_and_the_allocations_nodes():
    assert unknown_nodes(["n1", "n9", "n2"], ["n1", "n2", "n3"]) == ["n9"]
    assert allocation_nodes({"SLURM_JOB_NODELIST": "n[1-3],gpu01"}) == ["n1", "n2", "n3", "gpu01"]
    assert allocation_nodes({}) is None


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "hpcps.cluster", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def test_cli_from_saved_scontrol_output(tmp_path):
    out = tmp_path / "sub dir" / "site.toml"
    r = run_cli("--from-slurm", "--scontrol-output", str(DATA / "scontrol_nodes_hetero8.txt"), "--out", str(out),
                "--name", "mine")
    assert r.returncode == 0, r.stderr
    assert load_cluster(out).name == "mine" and len(load_cluster(out)) == 8
    again = run_cli("--from-slurm", "--scontrol-output", str(DATA / "scontrol_nodes_hetero8.txt"), "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr and "never overwritten" in again.stderr


def test_cli_partition_filter_and_errors(tmp_path):
    saved = tmp_path / "nodes.txt"
    saved.write_text(NODES_SITE)
    r = run_cli("--from-slurm", "--scontrol-output", str(saved), "--partition", "gpu")
    assert r.returncode == 0 and "gpu01" in r.stdout and "cpu001" not in r.stdout
    r = run_cli("--from-slurm", "--scontrol-output", str(saved), "--partition", "nope")
    assert r.returncode == 2 and "no node in partition 'nope'" in r.stderr
    r = run_cli("--from-slurm", "--scontrol-output", str(tmp_path / "missing.txt"))
    assert r.returncode == 2 and "file not found" in r.stderr


def test_cli_refuses_what_a_cluster_file_cannot_hold(tmp_path):
    saved = tmp_path / "nodes.txt"
    saved.write_text(NODES_SITE.replace("CPUTot=128", "CPUTot=-4"))
    out = tmp_path / "c.toml"
    r = run_cli("--from-slurm", "--scontrol-output", str(saved), "--out", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "node cpu001 has CPUTot=-4" in r.stderr and not out.exists()


def test_cli_on_input_that_is_not_utf8_or_not_a_file(tmp_path):
    saved = tmp_path / "nodes.txt"
    saved.write_bytes(b"NodeName=n1 CPUTot=4 \xff\xfe\n")
    r = run_cli("--from-slurm", "--scontrol-output", str(saved))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not UTF-8 text" in r.stderr, r.stderr
    r = run_cli("--from-slurm", "--scontrol-output", str(tmp_path))
    assert r.returncode == 2 and "is a directory" in r.stderr
    r = run_cli("--from-slurm", "--scontrol-output", str(saved), "--out", str(saved))
    assert r.returncode == 2 and "is also an input of this command" in r.stderr
    assert saved.read_bytes().startswith(b"NodeName=n1")
