"""The ask/tell loop: persistence after every trial, failing trials recorded and passed over, every
strategy proposing runnable schedules it has not measured."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from hpcps.cluster import load_cluster
from hpcps.cluster.placement import load_node_schedule
from hpcps.config import load_job
from hpcps.tune import rundir
from hpcps.tune.backends.sim import SimBackend
from hpcps.tune.loop import Settings, TuningRun
from hpcps.tune.problem import problem_for
from hpcps.tune.strategies import STRATEGIES, make_strategy, schedule_key
from hpcps.tune.trials import Backend, TrialResult

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup():
    cluster = load_cluster(ROOT / "jobs/clusters/hetero10b.toml")
    job = load_job(ROOT / "jobs/cifar.toml")
    return cluster, job, problem_for(cluster, job)


def settings(strategy: str, cluster) -> Settings:
    return Settings(job="jobs/cifar.toml", cluster=cluster.source, backend="sim", strategy=strategy, seed=0,
                    budget=6, cluster_name=cluster.name, global_batch=64)


class FlakyBackend(Backend):
    """The simulator, except that trial 2 crashes and trial 3 runs out of memory."""
    name = "flaky"

    def __init__(self, inner):
        self.inner = inner

    def run_trial(self, trial_dir, schedule, trial):
        if trial == 2:
            raise RuntimeError("the MPI job died\nwith a long story")
        if trial == 3:
            return TrialResult("out of memory on node c1 (type old, memory_gb = 2.0)")
        return self.inner.run_trial(trial_dir, schedule, trial)


@pytest.mark.parametrize("strategy", ["structured", "heuristic"])
def test_a_failing_trial_is_recorded_with_its_reason_and_the_search_goes_on(setup, tmp_path, strategy):
    cluster, job, problem = setup
    backend = FlakyBackend(SimBackend(cluster, job, iterations=3))
    run = TuningRun(tmp_path, settings(strategy, cluster), problem, make_strategy(strategy, problem), backend,
                    echo=lambda s: None)
    run.run(5)
    rows = list(csv.DictReader((tmp_path / "trials.csv").read_text().splitlines()))
    assert [r["trial"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[1]["status"] == "error: RuntimeError: the MPI job died"
    assert rows[2]["status"].startswith("out of memory on node c1")
    assert rows[1]["iteration_time_s"] == "" and rows[2]["iteration_time_s"] == ""
    assert all(r["status"] == "ok" for r in (rows[0], rows[3], rows[4]))
    best = load_node_schedule(tmp_path / "best_schedule.toml")
    best.check_against(cluster, 64)
    assert (tmp_path / "convergence.png").stat().st_size > 0
    state = json.loads((tmp_path / "state.json").read_text())
    assert [t["trial"] for t in state["trials"]] == [1, 2, 3, 4, 5]
    assert state["trials"][1]["observations_file"] is None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_proposes_runnable_schedules_it_has_not_measured(setup, tmp_path, strategy):
    cluster, job, problem = setup
    run = TuningRun(tmp_path, settings(strategy, cluster), problem, make_strategy(strategy, problem, seed=1),
                    SimBackend(cluster, job, iterations=3), echo=lambda s: None)
    run.run(6 if strategy in ("structured", "gp") else 12)
    assert run.history[0].note == "naive"
    keys = [schedule_key(problem.space, r.point) for r in run.history]
    assert len(set(keys)) == len(keys)
    for r in run.history:
        assert r.ok, r.status
        s = problem.space.decode(r.point)
        s.check_against(cluster, 64)
    if strategy in ("structured", "gp"):
        assert all(r.predicted_s is not None and r.predicted_s > 0 for r in run.history[3:])


def test_the_heuristic_follows_its_plan(setup, tmp_path):
    cluster, job, problem = setup
    run = TuningRun(tmp_path, settings("heuristic", cluster), problem, make_strategy("heuristic", problem),
                    SimBackend(cluster, job, iterations=3), echo=lambda s: None)
    run.run(4)
    notes = [r.note for r in run.history]
    assert notes[:3] == ["naive", "heuristic threads=one servers=1 drop=0 balance=prop",
                         "heuristic threads=cores servers=1 drop=0 balance=prop"]
    # Its second trial: servers on the best-connected node (io1, 10 Gb/s), batches by measured speed.
    s = problem.space.decode(run.history[1].point)
    assert [p.name for p in s.nodes if p.server] == ["io1"]
    batch = {p.name: p.workers[0].batch for p in s.nodes if p.workers}
    assert batch["g1"] > 4 * batch["c1"]


def test_state_round_trips(setup, tmp_path):
    cluster, job, problem = setup
    run = TuningRun(tmp_path, settings("random", cluster), problem, make_strategy("random", problem),
                    SimBackend(cluster, job, iterations=2), echo=lambda s: None)
    run.run(3)
    run.save_state()
    back = rundir.load_records(tmp_path, rundir.read_state(tmp_path))
    assert [r.trial for r in back] == [1, 2, 3]
    for a, b in zip(run.history, back):
        assert a.status == b.status and a.iteration_time_s == b.iteration_time_s
        np.testing.assert_array_equal(a.point, b.point)
        np.testing.assert_array_equal(a.observations, b.observations)
        assert a.to_state() == b.to_state()
