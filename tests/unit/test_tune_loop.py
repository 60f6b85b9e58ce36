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
        # Without --codecs every worker pushes with the job's codec: no schedule names one.
        assert all("codec" not in w for node in r.schedule["nodes"] for w in node["workers"])
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


# -- codecs as a knob ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def codec_setup():
    cluster = load_cluster(ROOT / "jobs/clusters/hetero10b.toml")
    job = load_job(ROOT / "jobs/cifar.toml")
    return cluster, job, problem_for(cluster, job, codecs=("int8", "fp16"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_with_codecs_every_strategy_proposes_runnable_schedules_with_allowed_codecs_only(codec_setup, tmp_path,
                                                                                         strategy):
    cluster, job, problem = codec_setup
    assert problem.space.codecs == ("none", "fp16", "int8") and problem.space.n_dims == 50
    run = TuningRun(tmp_path, settings(strategy, cluster), problem, make_strategy(strategy, problem, seed=1),
                    SimBackend(cluster, job, iterations=3), echo=lambda s: None)
    run.run(6 if strategy in ("structured", "gp") else 10)
    assert run.history[0].note == "naive"
    keys = [schedule_key(problem.space, r.point) for r in run.history]
    assert len(set(keys)) == len(keys)
    named = set()
    for r in run.history:
        assert r.ok, r.status
        s = problem.space.decode(r.point)
        s.check_against(cluster, 64)
        codecs = {w.codec for p in s.nodes for w in p.workers}
        assert codecs <= {None, "fp16", "int8"}
        assert codecs == {w.get("codec") for node in r.schedule["nodes"] for w in node["workers"]}
        assert load_node_schedule(tmp_path / "trials" / f"{r.trial:04d}" / "schedule.toml").nodes == s.nodes
        named |= codecs - {None}
    if strategy in ("random", "anneal", "gp"):
        assert named, "no trial tried a codec"
    back = rundir.load_records(tmp_path, rundir.read_state(tmp_path))
    assert [list(r.point) for r in back] == [list(r.point) for r in run.history]


def test_without_codecs_a_job_with_its_own_codec_keeps_it_everywhere(tmp_path):
    """A job whose [exchange] codec is int8: the space has no codec parameter and no schedule names a
    codec, so every worker pushes int8, as the job says."""
    cluster = load_cluster(ROOT / "jobs/clusters/hetero10b.toml")
    job_file = tmp_path / "job.toml"
    job_file.write_text((ROOT / "jobs/cifar.toml").read_text() + '\n[exchange]\ncodec = "int8"\n')
    job = load_job(job_file)
    problem = problem_for(cluster, job)
    assert problem.space.codecs == ("int8",) and not problem.space.tunes_codecs
    run = TuningRun(tmp_path / "run", settings("anneal", cluster), problem, make_strategy("anneal", problem),
                    SimBackend(cluster, job, iterations=2), echo=lambda s: None)
    run.run(6)
    assert all(r.ok for r in run.history)
    assert all("codec" not in w for r in run.history for node in r.schedule["nodes"] for w in node["workers"])


def test_the_heuristic_gives_the_smallest_allowed_codec_to_workers_behind_the_slowest_nics(tmp_path):
    cluster = load_cluster(ROOT / "jobs/clusters/slownet5.toml")
    job = load_job(ROOT / "jobs/cifar-wide.toml")
    problem = problem_for(cluster, job, codecs=("int8", "fp16"))
    strategy = make_strategy("heuristic", problem)
    assert strategy.smallest_codec() == problem.space.codecs.index("int8")
    run = TuningRun(tmp_path, settings("heuristic", cluster), problem, strategy,
                    SimBackend(cluster, job, iterations=2), echo=lambda s: None)
    while not any("compress" in r.note for r in run.history):
        assert len(run.history) < 12, [r.note for r in run.history]
        run.step()
    rec = run.history[-1]
    assert rec.note.endswith(" compress=1") and rec.setting["compress"] == 1
    before = [r for r in run.history[:-1] if r.setting is not None]
    assert all("compress" not in r.note and "compress" not in r.setting for r in before)
    s = problem.space.decode(rec.point)
    codecs = {p.name: p.workers[0].codec for p in s.nodes if p.workers}
    slow = {n.name for n in cluster.nodes if n.type.nic_gbps == 1.0}
    assert codecs and all(c == ("int8" if name in slow else None) for name, c in codecs.items())
    # On this network-bound cluster it pays.
    assert rec.time_s < min(r.time_s for r in before)


# -- the synchronisation as a knob --------------------------------------------------------------------

class RecordingBackend(Backend):
    """The simulator, noting the sync each trial was given."""
    name = "recording"

    def __init__(self, inner):
        self.inner = inner
        self.syncs: list[str | None] = []

    def run_trial(self, trial_dir, schedule, trial, sync=None):
        self.syncs.append(sync)
        return self.inner.run_trial(trial_dir, schedule, trial, sync=sync)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_with_syncs_every_strategy_proposes_allowed_syncs_and_each_trial_runs_under_its_own(tmp_path, strategy):
    cluster = load_cluster(ROOT / "jobs/clusters/hetero8.toml")
    job = load_job(ROOT / "jobs/hetero8.toml")
    problem = problem_for(cluster, job, syncs=("asp", "ssp2", "bsp"))
    assert problem.space.syncs == ("bsp", "ssp2", "asp") and problem.space.n_dims == 33
    backend = RecordingBackend(SimBackend(cluster, job, iterations=3))
    run = TuningRun(tmp_path, settings(strategy, cluster), problem, make_strategy(strategy, problem, seed=1),
                    backend, echo=lambda s: None)
    run.run(6 if strategy in ("structured", "gp") else 10)
    assert run.history[0].note == "naive" and backend.syncs[0] == "bsp"
    keys = [schedule_key(problem.space, r.point) for r in run.history]
    assert len(set(keys)) == len(keys)
    syncs = [problem.space.sync_of(r.point) for r in run.history]
    assert syncs == backend.syncs
    for r, sync in zip(run.history, syncs):
        assert r.ok, r.status
        problem.space.decode(r.point).check_against(cluster, job.training.global_batch)
        assert r.summary.endswith(f"; sync={sync}")
        assert (tmp_path / "trials" / f"{r.trial:04d}" / "schedule.toml").read_text().startswith(
            f"# Run under sync = {sync}:")
    assert len(set(syncs)) > 1, f"{strategy} never changed the synchronisation: {syncs}"
    best = run.best()
    assert (tmp_path / "best_schedule.toml").read_text().startswith(
        f"# Run under sync = {problem.space.sync_of(best.point)}:")
    table = list(csv.DictReader((tmp_path / "trials.csv").read_text().splitlines()))
    assert [x["schedule"].rsplit("sync=", 1)[1] for x in table] == syncs


def test_without_syncs_backends_are_called_as_before_and_nothing_names_a_sync(setup, tmp_path):
    cluster, job, problem = setup
    assert not problem.space.tunes_syncs

    class Plain(Backend):           # a backend from before syncs were tuned: no sync argument
        def run_trial(self, trial_dir, schedule, trial):
            return SimBackend(cluster, job, iterations=2).run_trial(trial_dir, schedule, trial)
    run = TuningRun(tmp_path, settings("random", cluster), problem, make_strategy("random", problem), Plain(),
                    echo=lambda s: None)
    run.run(3)
    assert all(r.ok and "sync" not in r.summary for r in run.history)
    assert not (tmp_path / "best_schedule.toml").read_text().startswith("#")


# -- a trial's own warnings ---------------------------------------------------------------------------

class WarningBackend(Backend):
    """The simulator, except that trial 2 says (as hpcps.train does) that this machine could not keep up."""
    name = "sim"

    def __init__(self, inner):
        self.inner = inner

    def run_trial(self, trial_dir, schedule, trial):
        result = self.inner.run_trial(trial_dir, schedule, trial)
        if trial != 2:
            return result
        return TrialResult(result.status, result.iteration_time_s, result.observations, result.trace_path,
                           result.iteration_times_s, result.elapsed_s, warnings=(OVERRAN, LATE))


OVERRAN = ("hpcps.train: warning: 15 of 200 emulated steps ran longer here than on their node (by 22.9 ms "
           "emulated in all); raise --time-dilation for a faithful emulation")
LATE = "hpcps.testbed: warning: the machine's host took 6% of its CPU time during the run (steal)"


def test_a_trial_that_warned_says_so_in_trials_csv_the_progress_line_the_state_and_the_final_report(setup,
                                                                                                  tmp_path):
    from hpcps.tune.cli import final_report
    cluster, job, problem = setup
    lines: list[str] = []
    run = TuningRun(tmp_path, settings("random", cluster), problem, make_strategy("random", problem),
                    WarningBackend(SimBackend(cluster, job, iterations=2)), echo=lines.append)
    run.run(3)
    rows = list(csv.DictReader((tmp_path / "trials.csv").read_text().splitlines()))
    assert [r["warnings"] for r in rows] == ["", f"{OVERRAN} | {LATE}", ""]
    progress = [ln for ln in lines if ln.startswith("trial ")]
    assert ["2 warning(s)" in ln for ln in progress] == [False, True, False], progress
    back = rundir.load_records(tmp_path, rundir.read_state(tmp_path))
    assert [r.warnings for r in back] == [[], [OVERRAN, LATE], []]
    report = final_report(run)
    assert "1 of 3 measured trial(s) warned that this machine could not keep up" in report, report
    assert "trial(s) 2" in report and "--dilation" not in report      # the sim backend has no dilation
    assert ("the best among them" in report) == (run.best().trial == 2), report


def test_a_state_written_before_trials_kept_warnings_loads_with_none(setup, tmp_path):
    cluster, job, problem = setup
    run = TuningRun(tmp_path, settings("random", cluster), problem, make_strategy("random", problem),
                    SimBackend(cluster, job, iterations=2), echo=lambda s: None)
    run.run(1)
    state = rundir.read_state(tmp_path)
    for t in state["trials"]:
        del t["warnings"]
    assert [r.warnings for r in rundir.load_records(tmp_path, state)] == [[]]
