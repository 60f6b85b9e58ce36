"""Generated and mutated tables fed to every loader: each returns a configuration or raises ConfigError
(one message naming the source), within a second; nothing else."""

from __future__ import annotations

import tempfile
import tomllib
from pathlib import Path

import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcps.cluster.description import parse_cluster
from hpcps.cluster.placement import parse_node_schedule, placement_of
from hpcps.config.errors import ConfigError
from hpcps.config.job import parse_job
from hpcps.config.schedule import parse_schedule
from hpcps.config.toml_schema import read_toml
from hpcps.sim.profile import DEFAULT_PROFILES, load_profiles
from tests.fuzz.harness import mutate, time_limit

ROOT = Path(__file__).resolve().parents[2]
JOB = {"name": "t", "workload": "digits", "cluster": "c.toml", "model": {"hidden": 32}, "data": {"test_fraction": 0.2},
       "optimizer": {"name": "adam", "lr": 0.01, "momentum": 0.5, "betas": [0.9, 0.99], "eps": 1e-8},
       "training": {"global_batch": 64, "iterations": 10, "seed": 3, "log_every": 5, "eval_every": 0, "sync": "bsp"},
       "schedule": {"servers": [0], "workers": [{"rank": 0, "batch": 32}, {"rank": 1, "batch": 32, "threads": 2}]}}
CLUSTER = tomllib.loads((ROOT / "jobs/clusters/hetero8.toml").read_text())
SCHEDULE = {"servers": [0, 2], "workers": [{"rank": 0, "batch": 8, "threads": 1}, {"rank": 1, "batch": 56}]}
NODE_SCHEDULE = {"nodes": [{"name": "n1", "server": True, "workers": [{"batch": 32, "threads": 2}]},
                           {"name": "n6", "workers": [{"batch": 16}, {"batch": 16, "threads": 8}]}]}
PROFILES = tomllib.loads(DEFAULT_PROFILES.read_text())


def outcome(load, table):
    with time_limit(5):
        try:
            return load(table)
        except ConfigError as e:
            assert "\n" not in str(e) and str(e).startswith("f.toml"), str(e)
            return e


@settings(max_examples=600)
@given(st.data())
def test_jobs(data):
    outcome(lambda t: parse_job(t, "f.toml"), mutate(data, JOB))


@settings(max_examples=600)
@given(st.data())
def test_clusters(data):
    outcome(lambda t: parse_cluster(t, "f.toml"), mutate(data, CLUSTER))


@settings(max_examples=600)
@given(st.data())
def test_schedules(data):
    outcome(lambda t: parse_schedule(t, "f.toml"), mutate(data, SCHEDULE))


@settings(max_examples=600)
@given(st.data())
def test_node_schedules_placed_on_a_cluster(data):
    cluster = parse_cluster(CLUSTER, "c.toml")

    def load(t):
        return placement_of(parse_node_schedule(t, "f.toml"), cluster, 64)
    table = mutate(data, NODE_SCHEDULE)        # drawn before the clock starts: only the loading is timed
    with time_limit(5):
        try:
            load(table)
        except ConfigError as e:
            assert "\n" not in str(e) and str(e).split(":")[0] in ("f.toml", "c.toml"), str(e)


@settings(max_examples=300)
@given(st.data())
def test_compute_profiles(data):
    table = mutate(data, PROFILES, max_changes=2)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.toml"
        path.write_text(tomli_w.dumps(table))
        with time_limit(5):
            try:
                profiles = load_profiles(path)
            except ConfigError as e:
                assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
                return
    for w in profiles.workloads:         # what the loader accepts gives finite, positive step times
        t = w.step_time(64, 2, 1, 8)
        assert 0 < t < 1e9


def test_errors_are_one_line_whatever_the_keys_hold():
    table = dict(JOB, **{"bad\nkey\r": 1})
    e = outcome(lambda t: parse_job(t, "f.toml"), table)
    assert isinstance(e, ConfigError) and "bad\\nkey\\r" in str(e)


@settings(max_examples=300)
@given(text=st.one_of(st.binary(max_size=200), st.binary(max_size=40).map(
    lambda b: tomli_w.dumps(JOB).encode()[: len(b) * 7] + b)))
def test_any_bytes_as_a_config_file(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.toml"
        path.write_bytes(text)
        with time_limit(5):
            try:
                parse_job(read_toml(path), str(path))
            except ConfigError as e:
                assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)


@settings(max_examples=150)
@given(st.data())
def test_what_hpcps_train_checks_on_rank_0(data):
    """hpcps.train's checks before any rank starts (resolve_inputs, plan_trace): a launch or a ConfigError."""
    from hpcps.train import build_parser, plan_trace, resolve_inputs
    which = data.draw(st.sampled_from(["job", "cluster", "schedule", "node schedule"]), label="mutated")
    job = {k: v for k, v in JOB.items() if k != "cluster"}
    job["schedule"] = {"servers": [0], "workers": [{"rank": r, "batch": 16} for r in range(4)]}
    tables = {"job": job, "cluster": CLUSTER, "schedule": SCHEDULE | {"workers": [
        {"rank": 0, "batch": 32}, {"rank": 3, "batch": 32, "threads": 2}]},
              "node schedule": {"nodes": [{"name": "n1", "server": True, "workers": [{"batch": 32}]},
                                          {"name": "n6", "workers": [{"batch": 16}, {"batch": 16}]}]}}
    tables[which] = mutate(data, tables[which])
    use_cluster = which in ("cluster", "node schedule") or data.draw(st.booleans(), label="with cluster")
    schedule = "node schedule" if which == "node schedule" else "schedule"
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for name, table in tables.items():
            (d / f"{name.replace(' ', '_')}.toml").write_text(tomli_w.dumps(table))
        # Every option at hpcps.train's own default, then the files of this case: a new option of the
        # command is in the namespace without this test knowing it.
        args = build_parser().parse_args([])
        vars(args).update(
            job=d / "job.toml", schedule=d / f"{schedule.replace(' ', '_')}.toml", iterations=None,
            device="cpu", gpu_transport="auto", cluster=d / "cluster.toml" if use_cluster else None,
            placement="auto", time_dilation=None, emulate_compute="reference", trace=d / "t.h5", no_trace=False,
            trace_flush_s=None, quiet=True)
        with time_limit(10):
            try:
                launch = resolve_inputs(args, 4)
                plan_trace(args, launch.job, launch.schedule, [])
            except ConfigError as e:
                assert "\n" not in str(e), str(e)
        assert not (d / "t.h5").exists()
