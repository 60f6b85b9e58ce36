"""Emulation measured in real MPI runs: each rank behaves like the node it stands for."""

import json
import re

import numpy as np
import pytest

from hpcps.trace import open_trace
from tests.conftest import assert_no_leftovers, run_mpi

TWO_SPEEDS = """
name = "two-speeds"
[types.full]
speed = 1.0
cores = 2
nic_gbps = 100.0
[types.quarter]
speed = 0.25
cores = 2
nic_gbps = 100.0
[[nodes]]
names = "a1"
type = "full"
[[nodes]]
names = "b1"
type = "quarter"
"""

CIFAR_SMALL = ('name = "c"\nworkload = "cifar-resnet"\n[model]\nwidth = 8\n[data]\nsamples = 512\n'
               'test_samples = 32\n[optimizer]\nname = "sgd"\nlr = 0.05\n[training]\nglobal_batch = 32\n'
               'iterations = 12\nlog_every = 4\n')


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def median_compute_by_node(trace):
    nodes = trace.rank_field("node_name")
    ev = trace.phase("compute")
    ev = ev[ev["iteration"] >= 2]                       # past the first steps' warm-up
    return {nodes[r]: float(np.median(ev["t_end"][ev["rank"] == r] - ev["t_start"][ev["rank"] == r]))
            for r in np.unique(ev["rank"])}


@pytest.mark.parametrize("mode,low,high", [
    # Each step charged the step's time alone, timed at start-up: 4x up to that timing's noise.
    ("reference", 3.3, 4.8),
    # Each step charged its own CPU time: measured 5-6x on a loaded 2-core machine, as the slow rank
    # sleeps longer between steps and its steps then cost more (docs/emulation.md, limits).
    ("measured", 3.0, 8.0),
])
def test_a_quarter_speed_node_takes_four_times_the_compute(tmp_path, mode, low, high):
    cluster = write(tmp_path, "cluster.toml", TWO_SPEEDS)
    sched = write(tmp_path, "schedule.toml", '[[nodes]]\nname = "a1"\nserver = true\nworkers = [{batch = 16}]\n'
                                             '[[nodes]]\nname = "b1"\nworkers = [{batch = 16}]\n')
    job = write(tmp_path, "job.toml", CIFAR_SMALL)
    # A generous dilation, so that on a loaded machine the real steps still end before their targets.
    out = run_mpi(2, ["-m", "hpcps.train", "--job", str(job), "--cluster", str(cluster), "--schedule", str(sched),
                      "--trace", str(tmp_path / "t.h5"), "--time-dilation", "6", "--emulate-compute", mode])
    assert out.returncode == 0, out.stderr
    assert "emulated on this machine" in out.stdout
    assert ("emulated step cost" in out.stdout) == (mode == "reference")
    trace = open_trace(tmp_path / "t.h5")
    assert trace.attrs["emulation_compute"] == mode and trace.attrs["emulation_dilation"] == 6.0
    if mode == "reference":
        costs = json.loads(trace.attrs["emulated_step_cost_s"])
        assert costs[0] == costs[1] > 0          # equal batches: charged the same, the least timing
    compute = median_compute_by_node(trace)
    ratio = compute["b1"] / compute["a1"]
    # Ignoring the speed would give about 1x, applying it twice about 16x.
    assert low < ratio < high, compute


def test_timing_the_reference_step_changes_nothing_in_training(tmp_path):
    """The start-up timing runs real steps; the model, its random state and gradients are put back,
    so training ends exactly where it ends when each step is charged its own time."""
    cluster = write(tmp_path, "cluster.toml", TWO_SPEEDS)
    sched = write(tmp_path, "schedule.toml", '[[nodes]]\nname = "a1"\nserver = true\nworkers = [{batch = 8}]\n'
                                             '[[nodes]]\nname = "b1"\nworkers = [{batch = 8}]\n')
    job = write(tmp_path, "job.toml", CIFAR_SMALL.replace("global_batch = 32", "global_batch = 16").replace(
        "iterations = 12", "iterations = 4"))
    finals = {}
    for mode in ("reference", "measured"):
        out = run_mpi(2, ["-m", "hpcps.train", "--job", str(job), "--cluster", str(cluster), "--schedule",
                          str(sched), "--no-trace", "--emulate-compute", mode])
        assert out.returncode == 0, out.stderr
        # the training losses logged along the way, and the final evaluation
        finals[mode] = (re.findall(r"loss (\S+)\s+train-acc (\S+)", out.stdout)
                        + [ln.split(";", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("done:")])
    assert len(finals["reference"]) >= 2 and finals["reference"] == finals["measured"], finals


SHARED_NIC = """
name = "shared-nic"
[types.thin]
speed = 1.0
cores = 2
nic_gbps = 0.05
latency_us = 0.0
[types.fat]
speed = 1.0
cores = 2
nic_gbps = 10.0
latency_us = 0.0
[[nodes]]
names = "s1"
type = "thin"
[[nodes]]
names = "w[1-2]"
type = "fat"
"""


def pull_durations(trace):
    tr = trace.transfers_of("pull")
    tr = tr[(tr["iteration"] >= 1) & (tr["rank"] != 0)]  # the workers' receipts of the server's shard
    return tr["t_end"] - tr["t_start"]


def test_two_flows_through_one_nic_each_get_half_its_bandwidth(tmp_path):
    cluster = write(tmp_path, "cluster.toml", SHARED_NIC)
    job = write(tmp_path, "job.toml", 'name = "d"\nworkload = "digits"\n[optimizer]\nname = "sgd"\nlr = 0.1\n'
                                      '[training]\nglobal_batch = 32\niterations = 6\n')
    medians = {}
    for n_workers in (1, 2):
        text = '[[nodes]]\nname = "s1"\nserver = true\n'
        for w in range(1, n_workers + 1):
            text += f'[[nodes]]\nname = "w{w}"\nworkers = [{{batch = {32 // n_workers}}}]\n'
        sched = write(tmp_path, f"schedule{n_workers}.toml", text)
        trace = tmp_path / f"t{n_workers}.h5"
        out = run_mpi(1 + n_workers, ["-m", "hpcps.train", "--job", str(job), "--cluster", str(cluster),
                                      "--schedule", str(sched), "--trace", str(trace)])
        assert out.returncode == 0, out.stderr
        t = open_trace(trace)
        medians[n_workers] = float(np.median(pull_durations(t)))
        # alone, a shard moves at the thin NIC's 0.05 Gb/s: bytes / bandwidth
        if n_workers == 1:
            expected = t.shards["nbytes"][0] / (0.05e9 / 8)
            assert medians[1] == pytest.approx(expected, rel=0.25)
    assert 1.6 < medians[2] / medians[1] < 2.5, medians


def test_a_batch_over_a_nodes_memory_fails_clearly(tmp_path):
    cluster = write(tmp_path, "cluster.toml", TWO_SPEEDS.replace("nic_gbps = 100.0\n[types.quarter]",
                                                                 "nic_gbps = 100.0\nmemory_gb = 0.1\n[types.quarter]"))
    sched = write(tmp_path, "schedule.toml", '[[nodes]]\nname = "a1"\nserver = true\nworkers = [{batch = 32}]\n')
    job = write(tmp_path, "job.toml", CIFAR_SMALL.replace("width = 8", "width = 16").replace(
        "samples = 512\n", "samples = 4096\n").replace("test_samples = 32", "test_samples = 512"))
    out = run_mpi(1, ["-m", "hpcps.train", "--job", str(job), "--cluster", str(cluster), "--schedule", str(sched)],
                  timeout=120)
    assert out.returncode == 2, out.stderr
    assert "out of memory on node a1" in out.stderr and "memory_gb" in out.stderr
    assert_no_leftovers(str(tmp_path))


def test_a_node_schedule_needs_a_cluster(tmp_path):
    sched = write(tmp_path, "schedule.toml", '[[nodes]]\nname = "a1"\nserver = true\nworkers = [{batch = 64}]\n')
    out = run_mpi(1, ["-m", "hpcps.train", "--schedule", str(sched)], timeout=60)
    assert out.returncode == 2 and "needs a cluster" in out.stderr


ONE_SERVER_SLOW_NICS = """
name = "one-server-slow-nics"
[types.slow-nic]
speed = 1.0
cores = 2
nic_gbps = 0.1
latency_us = 0.0
[[nodes]]
names = "s1"
type = "slow-nic"
[[nodes]]
names = "w1"
type = "slow-nic"
"""


@pytest.fixture(scope="module")
def overlapped_emulated_run(tmp_path_factory):
    """A server alone on one node, a worker on another, 0.1 Gb/s NICs, the model in pieces of 10 KiB,
    emulated at a generous dilation: on a loaded machine the real step must still end well before its
    pushes are due. (directory, completed process)"""
    tmp_path = tmp_path_factory.mktemp("overlapped")
    cluster = write(tmp_path, "cluster.toml", ONE_SERVER_SLOW_NICS)
    sched = write(tmp_path, "schedule.toml", '[[nodes]]\nname = "s1"\nserver = true\nworkers = []\n'
                                             '[[nodes]]\nname = "w1"\nworkers = [{batch = 16}]\n')
    job = write(tmp_path, "job.toml", CIFAR_SMALL.replace("global_batch = 32", "global_batch = 16")
                + "[exchange]\nbucket_mb = 0.01\n")
    out = run_mpi(2, ["-m", "hpcps.train", "--job", str(job), "--cluster", str(cluster), "--schedule", str(sched),
                      "--trace", str(tmp_path / "t.h5"), "--time-dilation", "30"])
    return tmp_path, out


def test_an_emulated_step_pushes_during_the_backward_pass(overlapped_emulated_run):
    """The worker pushes most pieces before its emulated step ends, each at its share of the step."""
    from hpcps.trace.schema import DIRECTION

    tmp_path, out = overlapped_emulated_run
    assert out.returncode == 0, out.stderr
    assert "overlapped" in out.stdout and "warning" not in out.stdout, out.stdout
    trace = open_trace(tmp_path / "t.h5")
    comp = trace.phase("compute")
    push = trace.transfers_of("push")
    sent = push[(push["direction"] == DIRECTION["send"]) & (push["rank"] == 1)]
    early = []
    for it in range(2, 12):
        c = comp[(comp["rank"] == 1) & (comp["iteration"] == it)][0]
        posts = sent["t_post"][sent["iteration"] == it]
        early.append(np.mean(posts < c["t_end"] - 0.1 * (c["t_end"] - c["t_start"])))
    assert len(sent) > 2 * 10 and np.median(early) >= 0.5, early


@pytest.mark.xfail(reason="known gap: on this 2-core machine the emulated overlapped iteration measured "
                          "36-78 ms against the simulator's 24 ms (30.7 ms pushing after the step); the "
                          "extra time is in the worker's pull and wait phases, run to run it varies 2x, and "
                          "its cause is not found (docs/emulation.md)", strict=False)
def test_an_emulated_overlapped_iteration_takes_the_simulators_time(overlapped_emulated_run):
    """The run's iteration time is the simulator's for that step time (charged, from the trace) within
    10%; pushing after the step would make it over a fifth slower, so the comparison tells the two
    apart."""
    import json
    from dataclasses import replace

    from hpcps.cluster import load_cluster
    from hpcps.cluster.placement import load_node_schedule
    from hpcps.sim import SimOptions, load_profiles, simulate
    from hpcps.sim.profile import WorkloadProfile

    tmp_path, out = overlapped_emulated_run
    assert out.returncode == 0, out.stderr
    trace = open_trace(tmp_path / "t.h5")
    cost = [c for c in json.loads(trace.attrs["emulated_step_cost_s"]) if c is not None][0]
    profile = WorkloadProfile("charged", int(trace.attrs["n_params"]), cost, 0.0, 0.5, 0.5, 0.0, 1e5)
    options = SimOptions(iterations=5, steady_state=True, bucket_mb=0.01)
    c = load_cluster(tmp_path / "cluster.toml")
    placement = load_node_schedule(tmp_path / "schedule.toml").to_rank_schedule()
    machine = load_profiles().machine
    simulated = simulate(c, placement, profile, machine, options).iteration_time_s
    after_step = simulate(c, placement, profile, machine, replace(options, overlap=False)).iteration_time_s
    it = trace.iterations
    emulated = float(np.median(it["time_s"][it["iteration"] >= 3]))
    assert after_step > 1.2 * simulated
    assert emulated == pytest.approx(simulated, rel=0.10), (emulated, simulated, after_step)


def test_a_run_that_cannot_keep_up_says_so_also_when_quiet(tmp_path):
    """Nodes 50x this machine at dilation 1: every real step overruns its emulated time. --quiet drops
    the progress lines, not the warning that the run's times are not the cluster's."""
    cluster = write(tmp_path, "cluster.toml", TWO_SPEEDS.replace("speed = 1.0", "speed = 50.0")
                    .replace("speed = 0.25", "speed = 50.0"))
    sched = write(tmp_path, "schedule.toml", '[[nodes]]\nname = "a1"\nserver = true\nworkers = [{batch = 16}]\n'
                                             '[[nodes]]\nname = "b1"\nworkers = [{batch = 16}]\n')
    job = write(tmp_path, "job.toml", CIFAR_SMALL)
    out = run_mpi(2, ["-m", "hpcps.train", "--job", str(job), "--cluster", str(cluster), "--schedule", str(sched),
                      "--time-dilation", "1", "--quiet"])
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert re.search(r"hpcps\.train: warning: \d+ of \d+ emulated steps ran longer here", out.stderr), out.stderr


def test_runs_sharing_a_step_costs_file_charge_one_step_alike(tmp_path):
    """The first run times its workers' steps and records them; a second run with another schedule
    charges the batch size the file holds exactly that (it does not time it again) and times and
    records only the new one. Without the file each run would charge its own timing."""
    cluster = write(tmp_path, "cluster.toml", TWO_SPEEDS)
    job = write(tmp_path, "job.toml", CIFAR_SMALL.replace("global_batch = 32", "global_batch = 16").replace(
        "iterations = 12", "iterations = 2"))
    costs_file = tmp_path / "step_costs.json"
    charged = []
    for i, batches in enumerate(((8, 8), (8, 8), (4, 12))):
        sched = write(tmp_path, f"schedule{i}.toml", f'[[nodes]]\nname = "a1"\nserver = true\n'
                                                     f'workers = [{{batch = {batches[0]}}}]\n'
                                                     f'[[nodes]]\nname = "b1"\nworkers = [{{batch = {batches[1]}}}]\n')
        trace = tmp_path / f"trace{i}.h5"
        out = run_mpi(2, ["-m", "hpcps.train", "--job", str(job), "--cluster", str(cluster), "--schedule",
                          str(sched), "--trace", str(trace), "--step-costs", str(costs_file)])
        assert out.returncode == 0, out.stderr
        costs = json.loads(open_trace(trace).attrs["emulated_step_cost_s"])
        charged.append(costs)
        recorded = json.loads(costs_file.read_text())["steps"]
        assert len(recorded) == 1, recorded
        table = next(iter(recorded.values()))
        if i == 0:
            assert set(table) == {"8"} and costs[0] == costs[1] == table["8"]
            assert "as recorded in" not in out.stdout
        elif i == 1:
            assert charged[1] == charged[0] and set(table) == {"8"}
            assert f"(2 as recorded in {costs_file})" in out.stdout, out.stdout
        else:
            assert set(table) == {"4", "8", "12"}
            assert costs == [table["4"], table["12"]] and table["8"] == charged[0][0]
            assert table["4"] < table["8"] < table["12"]          # a larger batch costs more
