"""The testbed's links measured for real: training runs whose ranks talk TCP between network namespaces
through shaped links, read back from their hpcps traces; an MPI ping-pong for latency.

Rates are after dilation: a 1 Gb/s NIC at dilation 10 is a 100 Mbit/s link, a 10 Gb/s one a 1 Gbit/s
link. Traced times are emulated (divided by the dilation), so a traced bandwidth compares with the
cluster file's nic_gbps. A received message's time runs from when both ends had posted it to when the
receiver had it all (docs/trace.md), which is what the link decides; a send completes as soon as its
bytes sit in the sender's socket buffer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hpcps.testbed.plan import nic_burst_bytes
from hpcps.trace import open_trace
from hpcps.trace.schema import DIRECTION
from tests.testbed.conftest import PY, ROOT, bed_cli, namespaces_of

DILATION = 10.0
SILENT_SLOW = 0.70      # below this share of the rate a link is broken, whatever the machine
# A digits MLP with 8192 hidden units: 614,410 parameters, a 2.46 MB message each way per iteration,
# 197 ms at 100 Mbit/s and 20 ms at 1 Gbit/s (real); its step is a few milliseconds here.
JOB = ('name = "wide"\nworkload = "digits"\n[model]\nhidden = 8192\n[optimizer]\nname = "sgd"\nlr = 0.05\n'
       '[training]\nglobal_batch = 32\niterations = 6\nlog_every = 100\n')


def cluster_file(tmp_path, nodes: dict[str, tuple[float, float]]):
    """A cluster of one type per node: name -> (nic_gbps, latency_us)."""
    text = 'name = "links"\n'
    for i, (gbps, lat) in enumerate(nodes.values()):
        text += f"[types.t{i}]\nspeed = 1.0\ncores = 2\nnic_gbps = {gbps}\nlatency_us = {lat}\n"
    for i, name in enumerate(nodes):
        text += f'[[nodes]]\nnames = "{name}"\ntype = "t{i}"\n'
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def train_on_testbed(tmp_path, name, cluster, schedule_text, job=JOB, dilation=DILATION, warnings=None):
    """The trace of a training run on a testbed of cluster; warnings (a list) gets the run's warnings."""
    job_path, sched, trace = tmp_path / "job.toml", tmp_path / "schedule.toml", tmp_path / "trace.h5"
    job_path.write_text(job)
    sched.write_text(schedule_text)
    r = bed_cli("run", "--cluster", str(cluster), "--dilation", str(dilation), "--name", name, "--",
                    PY, "-m", "hpcps.train", "--job", str(job_path), "--cluster", str(cluster), "--schedule",
                    str(sched), "--trace", str(trace), cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on a testbed: real links, compute emulated at time dilation" in r.stdout, r.stdout
    assert namespaces_of(name) == []
    if warnings is not None:
        warnings += [line for line in r.stderr.splitlines() if ": warning: " in line]
    return open_trace(trace)


def received_gbps(trace, kind: str) -> dict[int, np.ndarray]:
    """Per receiving rank, the emulated Gb/s of each message of kind past the first iteration."""
    tr = trace.transfers_of(kind)
    tr = tr[(tr["direction"] == DIRECTION["recv"]) & (tr["iteration"] >= 1)]
    rate = tr["nbytes"] * 8 / (tr["t_end"] - tr["t_start"]) / 1e9
    return {int(peer): rate[tr["peer"] == peer] for peer in np.unique(tr["peer"])}


@pytest.mark.parametrize("nic_gbps,real", [(1.0, "100 Mbit/s"), (10.0, "1 Gbit/s")])
def test_traced_bandwidth_is_the_link_rate(tmp_path, bed_name, nic_gbps, real):
    cluster = cluster_file(tmp_path, {"a1": (nic_gbps, 20.0), "a2": (nic_gbps, 20.0)})
    warned: list[str] = []
    trace = train_on_testbed(tmp_path, bed_name, cluster, '[[nodes]]\nname = "a1"\nserver = true\n'
                                                          '[[nodes]]\nname = "a2"\nworkers = [{batch = 32}]\n',
                             warnings=warned)
    assert trace.attrs["emulation_network"] == "real" and trace.attrs["emulation_dilation"] == DILATION
    assert sorted(trace.rank_field("host").values()) == ["a1", "a2"]      # each rank on its node
    push = received_gbps(trace, "push")[1]          # the worker's (rank 1) pushes, received by the server
    pull = received_gbps(trace, "pull")[0]          # the server's (rank 0) shard, received by the worker
    for what, rates in (("push", push), ("pull", pull)):
        assert len(rates) == 5
        ratio = np.median(rates) / nic_gbps
        stolen = [w for w in warned if "(steal)" in w]
        if ratio <= 0.85 and stolen:
            # Known, and said: the links run on this machine's CPUs, and time its host takes from them
            # slows them (hpcps.testbed.control.STEAL_WARNING: every run of this test whose median fell
            # below 0.85 had 2.6-8.2% of CPU time stolen; under 1%, 0.92-0.97). Runs where the host took
            # nothing must keep the rate; and shaping that broke would send faster, which no steal excuses.
            pytest.xfail(f"traced {what} rate {ratio:.2f} of the link's, and the run warned: {stolen[0]}")
        if nic_gbps == 10.0 and SILENT_SLOW < ratio <= 0.85 and not warned:
            # A known gap: the testbed's fastest links (1 Gbit/s, LINK_GBPS_MAX) on a fresh 2-core machine
            # once moved every push at 0.71-0.90 of the rate (median 0.82) with under 2% stolen and no
            # warning, for a cause not found (docs/testbed.md, Limits). Shaping that broke would send
            # faster, or far slower (bits for bytes, the dilation twice): those still fail.
            pytest.xfail(f"traced {what} rate {ratio:.2f} of the 1 Gbit/s link's without a warning (known gap)")
        assert abs(ratio - 1) < 0.15, (what, real, rates, warned)


def test_two_flows_into_one_nic_each_get_about_half(tmp_path, bed_name):
    """Two workers push to one server at once: the server's ingress is shared; its egress likewise
    carries both pulls."""
    cluster = cluster_file(tmp_path, {"s": (1.0, 20.0), "w1": (1.0, 20.0), "w2": (1.0, 20.0)})
    trace = train_on_testbed(tmp_path, bed_name, cluster, '[[nodes]]\nname = "s"\nserver = true\n'
                                                          '[[nodes]]\nname = "w1"\nworkers = [{batch = 16}]\n'
                                                          '[[nodes]]\nname = "w2"\nworkers = [{batch = 16}]\n')
    push = received_gbps(trace, "push")
    assert sorted(push) == [1, 2]
    for rank, rates in push.items():
        assert 0.4 < np.median(rates) < 0.6, (rank, rates)
    # Together they fill the link.
    assert abs(np.median(push[1] + push[2]) - 1.0) < 0.15, push
    pull = received_gbps(trace, "pull")[0]
    assert 0.4 < np.median(pull) < 0.6, pull


def test_latency_is_the_mean_of_both_nics_dilated(tmp_path, bed_name):
    """One-way latency rank 0 to each other rank: half of each NIC's latency_us on its way out, half
    on its way in, times the dilation. Long enough (5 and 10 ms) that the MPI and Python overhead of a
    machine loaded by other work (up to a millisecond seen at a load average of 20) stays inside 20%."""
    cluster = cluster_file(tmp_path, {"a1": (1.0, 500.0), "a2": (1.0, 500.0), "b1": (1.0, 1500.0)})
    r = bed_cli("run", "--cluster", str(cluster), "--dilation", str(DILATION), "--name", bed_name, "-n", "3",
                    "--", PY, str(ROOT / "tests" / "testbed" / "pingpong.py"), "40", cwd=tmp_path, timeout=200)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["nodes"] == ["a1", "a2", "b1"]
    expected = {"a2": 500e-6 * DILATION, "b1": (500e-6 + 1500e-6) / 2 * DILATION}
    for pair in out["pairs"].values():
        assert abs(pair["one_way_s"] / expected[pair["node"]] - 1) < 0.20, (pair, expected)


def test_messages_follow_the_links_not_the_emulated_network(tmp_path, bed_name):
    """On a testbed the emulated network (hpcps.emulate.fabric) must not hold messages as well. Here the
    training reads a cluster file whose NICs are ten times slower than the links the testbed built
    (same nodes, 0.1 Gb/s against 1 Gb/s): the traced bandwidth is the links', not the file's."""
    cluster = cluster_file(tmp_path, {"a1": (1.0, 20.0), "a2": (1.0, 20.0)})
    slow = tmp_path / "slow.toml"
    slow.write_text(cluster.read_text().replace("nic_gbps = 1.0", "nic_gbps = 0.1"))
    job_path, sched, trace_path = tmp_path / "job.toml", tmp_path / "schedule.toml", tmp_path / "trace.h5"
    job_path.write_text(JOB)
    sched.write_text('[[nodes]]\nname = "a1"\nserver = true\n[[nodes]]\nname = "a2"\nworkers = [{batch = 32}]\n')
    r = bed_cli("run", "--cluster", str(cluster), "--dilation", str(DILATION), "--name", bed_name, "--",
                PY, "-m", "hpcps.train", "--job", str(job_path), "--cluster", str(slow), "--schedule", str(sched),
                "--trace", str(trace_path), cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    trace = open_trace(trace_path)
    assert trace.attrs["emulation_network"] == "real"
    push = received_gbps(trace, "push")[1]
    assert abs(np.median(push) - 1.0) < 0.15, push


def test_a_message_of_a_few_packets_moves_at_the_link_rate(tmp_path, bed_name):
    """A 154 KB message each way (a slice of a schedule with a few servers) between a 10 Gb/s server and a
    1 Gb/s worker, at hetero8's dilation: within 15% of the slow NIC's rate. htb passes a packet whole
    once its bucket is not empty, so packets as large as the kernel builds them (64 KiB) let the start of
    each message through the slow NIC at once (hpcps.testbed.plan.packet_bytes)."""
    cluster = cluster_file(tmp_path, {"a1": (10.0, 20.0), "a2": (1.0, 20.0)})
    job = JOB.replace("hidden = 8192", "hidden = 512")               # 38,410 parameters: 153,640 bytes
    warned: list[str] = []
    trace = train_on_testbed(tmp_path, bed_name, cluster, '[[nodes]]\nname = "a1"\nserver = true\n'
                                                          '[[nodes]]\nname = "a2"\nworkers = [{batch = 32}]\n',
                             job=job, warnings=warned, dilation=16.0)
    for kind, rank in (("push", 1), ("pull", 0)):
        tr = trace.transfers_of(kind)
        assert (tr["nbytes"] == 153_640).all(), tr["nbytes"]
        rates = received_gbps(trace, kind)[rank]
        assert len(rates) == 5
        ratio = float(np.median(rates)) / 1.0
        # Measured: 1.02-1.07 of the rate (both ways, 2 runs); with the kernel's packet size, 1.16-1.19.
        assert ratio < 1.15, (kind, rates)
        if ratio <= 0.85 and any("(steal)" in w for w in warned):
            pytest.xfail(f"{kind} at {ratio:.2f} of the rate while the run warned: {warned}")
        assert ratio > 0.85, (kind, rates)


def test_short_messages_of_many_peers_are_shaped_together(tmp_path, bed_name):
    """Every iteration one server sends six workers a 120 KB message each at the same moment (their
    pulls), and takes six such pushes in. Together they may not pass faster than its NIC: a burst per
    peer (64 KiB each, as once) let more than half of such bytes through unshaped."""
    nodes = {"s": (1.0, 20.0), **{f"w{i}": (1.0, 20.0) for i in range(1, 7)}}
    cluster = cluster_file(tmp_path, nodes)
    job = JOB.replace("hidden = 8192", "hidden = 400").replace("global_batch = 32", "global_batch = 24")
    schedule = '[[nodes]]\nname = "s"\nserver = true\n' + "".join(
        f'[[nodes]]\nname = "w{i}"\nworkers = [{{batch = 4}}]\n' for i in range(1, 7))
    trace = train_on_testbed(tmp_path, bed_name, cluster, schedule, job=job)
    for kind in ("pull", "push"):
        tr = trace.transfers_of(kind)
        tr = tr[(tr["direction"] == DIRECTION["recv"]) & (tr["iteration"] >= 1)]
        rates, allowed = [], []
        for it in np.unique(tr["iteration"]):
            m = tr[tr["iteration"] == it]
            assert len(m) == 6 and m["nbytes"].min() > 100_000, m
            total = int(m["nbytes"].sum())
            rates.append(total * 8 / (m["t_end"].max() - m["t_start"].min()) / 1e9)
            # 1 Gb/s once the NIC's own burst has passed at once, with the usual 15%.
            allowed.append(1.15 * total / (total - nic_burst_bytes(int(1e9 / DILATION))))
        # Measured: 1.06-1.13 (pulls), 0.86-1.13 (pushes); with 64 KiB per peer, pulls 1.43-3.48.
        assert np.median(rates) < np.median(allowed), (kind, rates, allowed)
