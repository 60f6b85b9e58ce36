"""The slurm backend without Slurm: a stand-in launcher that plays a trial's states; the node-name check
against an allocation and against scontrol; what a failed, timed-out or cancelled trial records; and
stopping (the loop's stop request cancels the running trial, which is then not recorded)."""

import json
import shutil
import time
from pathlib import Path

import pytest

from hpcps.cluster import load_cluster
from hpcps.config import ConfigError, load_job
from hpcps.slurm import SlurmError, TrialState, TrialStatus
from hpcps.slurm.launcher import TrialHandle, TrialLauncher
from hpcps.tune.backends.slurm import SlurmBackend
from hpcps.tune.loop import Settings, TuningRun
from hpcps.tune.problem import problem_for
from hpcps.tune.strategies import make_strategy
from hpcps.tune.trials import Stop
from tests.unit.test_tune_local_backend import SCHEDULE, write_trace

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "jobs/clusters/hetero8.toml"
JOB = ROOT / "jobs/hetero8.toml"
ALLOCATION = {"SLURM_JOB_ID": "41", "SLURM_JOB_NODELIST": "n[1-8]"}


class FakeClient:
    def __init__(self, nodes="", job_state="RUNNING", fail=False):
        self.nodes, self.job_state, self.fail = nodes, job_state, fail

    def show_nodes(self):
        if self.fail:
            raise SlurmError(["scontrol", "show", "node"], "failed", 1, "Unable to contact slurm controller")
        return self.nodes

    def show_job(self, job_id):
        return {"JobId": job_id, "JobState": self.job_state}


class FakeLauncher:
    """Plays `states` one poll at a time; on the last, COMPLETED, copies `trace` to where --trace points."""

    def __init__(self, states, mode="step", trace=None, client=None):
        self.mode = mode
        self.allocation = "41" if mode == "step" else None
        self.client = client or FakeClient()
        self.states = list(states)
        self.trace = trace
        self.submitted = []
        self.cancelled = []

    def submit(self, trial_dir, command, nodes, ntasks, time_limit_s, env=None, *, rank_nodes=None, job_name=None):
        self.submitted.append(dict(trial_dir=trial_dir, command=command, nodes=nodes, ntasks=ntasks,
                                   time_limit_s=time_limit_s, env=env, rank_nodes=rank_nodes, job_name=job_name))
        out = Path(trial_dir) / "slurm.out"
        out.write_text("")
        return TrialHandle(Path(trial_dir), self.mode, job_name, time_limit_s, out, 0.0, job_id="41")

    def poll(self, handle):
        if handle.final is not None:
            return handle.final
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if handle.stop_status is not None:
            state = TrialState(handle.stop_status, exit_code=143, reason=handle.stop_reason, slurm_id="41.0")
        if state.done:
            handle.final = state
            if state.ok and self.trace:
                cmd = self.submitted[-1]["command"]
                shutil.copy(self.trace, cmd[cmd.index("--trace") + 1])
        return state

    def cancel(self, handle, reason="cancelled by the tuner"):
        self.cancelled.append(reason)
        handle.stop_status, handle.stop_reason = TrialStatus.CANCELLED, reason

    clock = staticmethod(time.monotonic)
    wait = TrialLauncher.wait             # the one wait loop, over this launcher's poll and cancel


RUNNING = TrialState(TrialStatus.RUNNING, slurm_id="41.0")


def backend(launcher, **kw):
    return SlurmBackend(load_cluster(CLUSTER), load_job(JOB), JOB, CLUSTER, iterations=5, timeout_s=90,
                        launcher=launcher, environ=ALLOCATION, poll_interval_s=0.001, **kw)


def test_a_trial_is_a_step_on_the_schedules_nodes_and_reads_its_trace(tmp_path):
    made = tmp_path / "made.h5"
    write_trace(made)
    launcher = FakeLauncher([RUNNING, RUNNING, TrialState(TrialStatus.COMPLETED, 0, slurm_id="41.0", elapsed_s=3.0)],
                            trace=made)
    trial_dir = tmp_path / "trials" / "0003"
    trial_dir.mkdir(parents=True)
    r = backend(launcher, env={"HPCPS_X": "1"}).run_trial(trial_dir, SCHEDULE, 3)
    assert r.ok and r.iteration_time_s == pytest.approx(0.030)
    assert r.observations is not None and len(r.observations) == 3 * 3     # iterations 2-4, 3 ranks
    assert r.notes == ("slurm step 41.0",)
    sub = launcher.submitted[0]
    assert sub["nodes"] == ["n1", "n3", "n6"] and sub["ntasks"] == 3 and sub["rank_nodes"] == ["n1", "n3", "n6"]
    assert sub["time_limit_s"] == 90 and sub["job_name"] == "hpcps-trial-0003"
    cmd = sub["command"]
    assert cmd[1:3] == ["-m", "hpcps.train"] and cmd[cmd.index("--iterations") + 1] == "5"
    assert cmd[cmd.index("--schedule") + 1] == str(trial_dir.resolve() / "schedule.toml")
    assert cmd[cmd.index("--cluster") + 1] == str(CLUSTER) and "--quiet" in cmd
    assert str(ROOT) in sub["env"]["PYTHONPATH"].split(":") and sub["env"]["HPCPS_X"] == "1"
    assert sub["env"]["OMP_NUM_THREADS"]
    record = json.loads((trial_dir / "slurm.json").read_text())
    assert record["slurm_id"] == "41.0" and record["status"] == "COMPLETED" and record["nodes"] == "n[1,3,6]"


@pytest.mark.parametrize("state, status", [
    (TrialState(TrialStatus.FAILED, 1, reason="exit code 1: ValueError: bad batch"),
     "exit code 1: ValueError: bad batch"),
    (TrialState(TrialStatus.FAILED, None, 9, reason="NODE_FAIL, signal 9"), "failed: NODE_FAIL, signal 9"),
    (TrialState(TrialStatus.TIMEOUT, reason="exceeded the trial time limit of 90 s"),
     "timeout: exceeded the trial time limit of 90 s"),
    (TrialState(TrialStatus.CANCELLED, reason="cancelled by Slurm (CANCELLED by 0)"),
     "cancelled: cancelled by Slurm (CANCELLED by 0)"),
])
def test_a_trial_that_does_not_complete_is_recorded_with_its_reason(tmp_path, state, status):
    r = backend(FakeLauncher([RUNNING, state])).run_trial(tmp_path, SCHEDULE, 1)
    assert not r.ok and r.status == status and r.iteration_time_s is None


def test_out_of_memory_is_named(tmp_path):
    launcher = FakeLauncher([TrialState(TrialStatus.FAILED, 1, reason="exit code 1: RuntimeError: boom")])
    b = backend(launcher)
    orig = launcher.submit

    def submit(*a, **kw):
        h = orig(*a, **kw)
        h.output.write_text("RuntimeError: CUDA out of memory\nRuntimeError: boom\n")
        return h
    launcher.submit = submit
    assert b.run_trial(tmp_path, SCHEDULE, 1).status == "out of memory: exit code 1: RuntimeError: boom"


def test_slurm_refusing_the_trial_is_an_error_not_an_exception(tmp_path):
    launcher = FakeLauncher([RUNNING])

    def refuse(*a, **kw):
        raise SlurmError(["srun"], "failed", 1, "srun: error: Invalid node name specified")
    launcher.submit = refuse
    r = backend(launcher).run_trial(tmp_path, SCHEDULE, 1)
    assert r.status.startswith("error: Slurm did not take the trial") and "Invalid node name" in r.status


def test_cluster_nodes_must_be_in_the_allocation():
    with pytest.raises(ConfigError) as e:
        SlurmBackend(load_cluster(CLUSTER), load_job(JOB), JOB, CLUSTER, launcher=FakeLauncher([RUNNING]),
                     environ={"SLURM_JOB_ID": "41", "SLURM_JOB_NODELIST": "n[1-2],x7"})
    msg = str(e.value)
    assert msg.startswith(f"{CLUSTER}: key 'nodes': node(s) n[3-8] of cluster 'hetero8' are not in this allocation")
    assert "n[1-2],x7" in msg and "--nodelist=n[1-8]" in msg


def test_outside_an_allocation_cluster_nodes_must_be_slurms():
    nodes = "\n".join(f"NodeName=n{i} CPUTot=2 RealMemory=4000 State=IDLE" for i in (1, 2, 3))
    with pytest.raises(ConfigError, match=r"node\(s\) n\[4-8\] .* are not in Slurm \(scontrol show node: n\[1-3\]\)"):
        SlurmBackend(load_cluster(CLUSTER), load_job(JOB), JOB, CLUSTER,
                     launcher=FakeLauncher([RUNNING], mode="job", client=FakeClient(nodes)), environ={})
    with pytest.raises(ConfigError, match="cannot ask Slurm for its nodes: .*Unable to contact slurm controller"):
        SlurmBackend(load_cluster(CLUSTER), load_job(JOB), JOB, CLUSTER,
                     launcher=FakeLauncher([RUNNING], mode="job", client=FakeClient(fail=True)), environ={})


def test_a_stop_request_cancels_the_running_trial(tmp_path):
    launcher = FakeLauncher([RUNNING] * 5 + [TrialState(TrialStatus.COMPLETED, 0)])
    b = backend(launcher)
    asked = iter([None, None, "SIGTERM"] + ["SIGTERM"] * 100)
    b.watch_stop(lambda: next(asked))
    r = b.run_trial(tmp_path, SCHEDULE, 1)
    assert launcher.cancelled == ["the tuner was stopped (SIGTERM)"]
    assert r.status == "cancelled: the tuner was stopped (SIGTERM)"


def test_a_step_cancelled_because_the_tuning_job_ends_stops_the_run(tmp_path):
    launcher = FakeLauncher([RUNNING, TrialState(TrialStatus.CANCELLED, reason="cancelled by Slurm: ...")],
                            client=FakeClient(job_state="CANCELLED"))
    with pytest.raises(Stop, match="the tuning job is ending"):
        backend(launcher).run_trial(tmp_path, SCHEDULE, 1)


def test_the_loop_does_not_record_a_trial_cut_short_by_a_stop(tmp_path):
    """SIGTERM while trial 2 runs: trial 1 kept, trial 2 cancelled and not recorded, the run stops saying
    why."""
    cluster, job = load_cluster(CLUSTER), load_job(JOB)
    problem = problem_for(cluster, job)
    made = tmp_path / "made.h5"
    write_trace(made)
    launcher = FakeLauncher([RUNNING, TrialState(TrialStatus.COMPLETED, 0, slurm_id="41.0")], trace=made)
    b = backend(launcher)
    settings = Settings(job=str(JOB), cluster=str(CLUSTER), backend="slurm", strategy="heuristic", seed=0, budget=3,
                        cluster_name=cluster.name, global_batch=64)
    out = tmp_path / "run"
    out.mkdir()
    run = TuningRun(out, settings, problem, make_strategy("heuristic", problem), b, echo=lambda s: None)
    polls = {"n": 0}
    orig_poll = launcher.poll

    def poll(handle):
        polls["n"] += 1
        if handle.job_name == "hpcps-trial-0002":
            run.stop_request.request("SIGTERM")      # as the signal handler does
            return RUNNING if handle.stop_status is None else orig_poll(handle)
        return orig_poll(handle)
    launcher.poll = poll
    assert run.run(3) == "SIGTERM" and run.stopped == "SIGTERM"
    state = json.loads((out / "state.json").read_text())
    assert [t["trial"] for t in state["trials"]] == [1] and state["trials"][0]["status"] == "ok"
    assert launcher.cancelled == ["the tuner was stopped (SIGTERM)"]
    assert [s["job_name"] for s in launcher.submitted] == ["hpcps-trial-0001", "hpcps-trial-0002"]
