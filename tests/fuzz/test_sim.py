"""hpcps.sim on generated clusters, schedules, jobs and flags, in-process: every value the loaders accept
simulates within seconds (values at the limits included); everything else is one line and exit 2."""

from __future__ import annotations

import tempfile
from pathlib import Path

import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcps.config import limits
from hpcps.sim.cli import main as sim_main
from tests.fuzz.harness import assert_clean, mutate, run_main


def bounded(lo, hi, *, integer=False, above=False):
    """Numbers from lo to hi, the bounds themselves and values near them drawn often."""
    edges = [hi] + ([lo] if not above else [])
    inner = (st.integers(lo + (1 if above else 0), hi) if integer else
             st.floats(lo, hi, exclude_min=above, allow_nan=False, allow_infinity=False))
    return st.one_of(st.sampled_from(edges), inner)


node_types = st.fixed_dictionaries({
    "speed": bounded(limits.MIN_SPEED, limits.MAX_SPEED),
    "cores": bounded(1, 64, integer=True),
    "nic_gbps": bounded(limits.MIN_NIC_GBPS, limits.MAX_NIC_GBPS),
}, optional={
    "latency_us": bounded(0.0, limits.MAX_LATENCY_US),
    "fixed_ms": bounded(0.0, limits.MAX_FIXED_MS),
    "memory_gb": bounded(0.0, limits.MAX_MEMORY_GB, above=True),
    "gpus": bounded(0, 8, integer=True),
})


@st.composite
def clusters(draw):
    types = draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), node_types, min_size=1, max_size=3))
    names = list(types)
    sizes = draw(st.lists(st.integers(1, 4), min_size=len(names), max_size=len(names)))
    nodes, first = [], 1
    for name, n in zip(names, sizes):
        nodes.append({"names": f"n[{first}-{first + n - 1}]", "type": name})
        first += n
    return {"name": "fuzz", "types": types, "nodes": nodes}, first - 1


@st.composite
def node_schedules(draw, n_nodes):
    used = draw(st.lists(st.integers(1, n_nodes), min_size=1, max_size=n_nodes, unique=True))
    plans = []
    for i, node in enumerate(used):
        workers = draw(st.lists(st.fixed_dictionaries({"batch": bounded(1, 10**6, integer=True)},
                                                      optional={"threads": bounded(1, 8, integer=True)}),
                                min_size=0 if i else 1, max_size=3))
        plans.append({"name": f"n{node}", "server": i == 0 or draw(st.booleans()), "workers": workers})
    return {"nodes": plans}


def job(workload, optimizer, global_batch):
    return {"name": "fuzz", "workload": workload, "optimizer": {"name": optimizer, "lr": 0.1},
            "training": {"global_batch": global_batch, "iterations": 5}}


flags = st.fixed_dictionaries({}, optional={
    "--iterations": st.integers(1, 5),
    "--noise": bounded(0.0, limits.MAX_NOISE_SIGMA),
    "--straggler-prob": bounded(0.0, 1.0),
    "--straggler-slowdown": bounded(1.0, limits.MAX_STRAGGLER_SLOWDOWN),
    "--seed": st.integers(0, 2**32 - 1),
    "--sharing": st.sampled_from(["maxmin", "equal"]),
    "--resolution": st.one_of(st.just(0.0), bounded(0.0, 1.0)),
    "--sync": st.sampled_from(["bsp", "ssp", "asp"]),
    "--staleness": st.one_of(st.just(0), bounded(0, limits.MAX_STALENESS, integer=True)),
    "--steady-state": st.just(None),
})


def run_sim(cluster: dict, schedule: dict | str, job_table: dict, extra: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "c.toml").write_text(tomli_w.dumps(cluster))
        (d / "j.toml").write_text(tomli_w.dumps(job_table))
        if isinstance(schedule, dict):
            (d / "s.toml").write_text(tomli_w.dumps(schedule))
            schedule = str(d / "s.toml")
        argv = ["--cluster", str(d / "c.toml"), "--job", str(d / "j.toml"), "--schedule", schedule, "--json"]
        for k, v in extra.items():
            argv += [k] if v is None else [k, str(v)]
        outcome = run_main(sim_main, argv, seconds=20)
    assert_clean(outcome, "hpcps.sim")


@settings(max_examples=150)
@given(st.data())
def test_valid_clusters_and_schedules_simulate(data):
    cluster, n_nodes = data.draw(clusters(), label="cluster")
    kind = data.draw(st.sampled_from(["naive", "balanced", "file"]), label="schedule")
    schedule = data.draw(node_schedules(n_nodes), label="nodes") if kind == "file" else kind
    gb = (sum(w["batch"] for p in schedule["nodes"] for w in p["workers"]) if kind == "file"
          else data.draw(bounded(1, 10**6, integer=True), label="global_batch"))
    workload = data.draw(st.sampled_from(["digits", "cifar-resnet", "charlm"]), label="workload")
    optimizer = data.draw(st.sampled_from(["sgd", "adam", "adamw"]), label="optimizer")
    run_sim(cluster, schedule, job(workload, optimizer, gb), data.draw(flags, label="flags"))


@settings(max_examples=150)
@given(st.data())
def test_mutated_inputs_are_refused_in_one_line(data):
    cluster, n_nodes = data.draw(clusters(), label="cluster")
    schedule = data.draw(node_schedules(n_nodes), label="nodes")
    gb = sum(w["batch"] for p in schedule["nodes"] for w in p["workers"])
    job_table = job("digits", "sgd", gb)
    which = data.draw(st.sampled_from(["cluster", "schedule", "job"]), label="mutated")
    if which == "cluster":
        cluster = mutate(data, cluster)
    elif which == "schedule":
        schedule = mutate(data, schedule)
    else:
        job_table = mutate(data, job_table)
    run_sim(cluster, schedule, job_table, {})


@settings(max_examples=60)
@given(st.dictionaries(st.sampled_from(["--iterations", "--noise", "--straggler-prob", "--straggler-slowdown",
                                        "--seed", "--resolution", "--staleness", "--sync"]),
                       st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e300", "-1e300", "1e9", "3", "0.5", "ssp"]),
                       min_size=1, max_size=3))
def test_bad_flags(extra):
    cluster = {"types": {"a": {"speed": 1.0, "cores": 2, "nic_gbps": 1.0}}, "nodes": [{"names": "n[1-2]", "type": "a"}]}
    run_sim(cluster, "naive", job("digits", "sgd", 8), extra)
