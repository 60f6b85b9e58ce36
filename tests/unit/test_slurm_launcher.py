"""TrialLauncher against a fake Slurm: a table of jobs and steps that the test moves from state to state."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from hpcps.slurm.client import SlurmError
from hpcps.slurm.launcher import TrialLauncher, TrialStatus
from hpcps.slurm.mpi import plugin_for_library, srun_mpi_plugin
from hpcps.slurm.parse import SacctRow, parse_record


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    """Stands in for the Popen of srun."""

    def __init__(self, pid: int = 4242):
        self.pid = pid
        self.returncode = None
        self.signals: list[int] = []
        self.killed = False

    def poll(self):
        return self.returncode

    def send_signal(self, sig):
        self.signals.append(sig)

    def kill(self):
        self.killed = True
        self.returncode = -9


class FakeSlurm:
    """The SlurmClient methods the launcher calls, answering from tables the test fills in."""

    def __init__(self):
        self.jobs: dict[str, dict[str, str]] = {}
        self.forgotten: set[str] = set()
        self.sacct_rows: dict[str, list[SacctRow]] = {}
        self.jobcomp: dict[str, dict[str, str]] = {}
        self.steps: list[dict[str, str]] = []
        self.calls: list[tuple] = []
        self.processes: list[FakeProcess] = []
        self.next_id = 100

    def sbatch(self, argv, cwd=None):
        self.calls.append(("sbatch", list(argv), cwd))
        job_id = str(self.next_id)
        self.next_id += 1
        self.jobs[job_id] = {"JobId": job_id, "JobState": "PENDING", "Reason": "Resources", "ExitCode": "0:0",
                             "RunTime": "00:00:00"}
        return job_id

    def show_job(self, job_id):
        self.calls.append(("show_job", job_id))
        return None if job_id in self.forgotten else dict(self.jobs[job_id])

    def show_steps(self, job_id=None):
        self.calls.append(("show_steps", job_id))
        return [s for s in self.steps if job_id is None or s["StepId"].split(".")[0] == job_id]

    def sacct(self, job_id):
        return self.sacct_rows.get(job_id, [])

    def jobcomp_record(self, job_id):
        return self.jobcomp.get(job_id)

    def scancel(self, job_or_step, *, signal=None, batch_only=False):
        self.calls.append(("scancel", job_or_step))

    def start_srun(self, argv, *, env=None, unset=(), cwd=None, output=None):
        self.calls.append(("srun", list(argv), dict(env or {}), cwd, output))
        self.unset = tuple(unset)
        p = FakeProcess()
        self.processes.append(p)
        return p

    def set_job(self, job_id, **fields):
        self.jobs[job_id].update(fields)


@pytest.fixture
def slurm():
    return FakeSlurm()


@pytest.fixture
def clock():
    return FakeClock()


def job_launcher(slurm, clock, **kw):
    return TrialLauncher(slurm, mode="job", mpi="pmi2", environ={}, clock=clock, **kw)


def step_launcher(slurm, clock, **kw):
    return TrialLauncher(slurm, mode="auto", mpi="pmi2", environ={"SLURM_JOB_ID": "7"}, clock=clock,
                         kill_grace_s=10, **kw)


# ---- batch jobs --------------------------------------------------------------------------------------

def test_job_is_submitted_with_a_rendered_script(slurm, clock, tmp_path):
    trial = tmp_path / "trial 1 'odd'"
    h = job_launcher(slurm, clock).submit(trial, ["python", "-m", "hpcps.train"], ["n1", "n2"], 4, 120,
                                          {"HPCPS_X": "a b"}, rank_nodes=["n1", "n1", "n2", "n2"])
    assert h.job_id == "100" and h.mode == "job"
    name, argv, cwd = slurm.calls[0]
    assert argv == ["sbatch", "--parsable", str(trial.resolve() / "job.sh")] and cwd == str(trial.resolve())
    script = (trial / "job.sh").read_text()
    assert "#SBATCH --time=3" in script           # 120 s + 60 s margin, in minutes
    assert "export HPCPS_X='a b'" in script and "--mpi=pmi2" in script
    assert (trial / "hostfile").read_text() == "n1\nn1\nn2\nn2\n"


def test_job_goes_pending_running_completed(slurm, clock, tmp_path):
    launcher = job_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["true"], ["n1"], 1, 60)
    s = launcher.poll(h)
    assert s.status is TrialStatus.PENDING and s.reason == "Resources" and not s.done
    slurm.set_job(h.job_id, JobState="RUNNING", Reason="None", RunTime="00:00:05")
    s = launcher.poll(h)
    assert s.status is TrialStatus.RUNNING and s.elapsed_s == pytest.approx(5)
    slurm.set_job(h.job_id, JobState="COMPLETED", ExitCode="0:0", RunTime="00:00:09")
    s = launcher.poll(h)
    assert s.ok and s.done and s.exit_code == 0 and s.slurm_id == h.job_id and s.elapsed_s == 9
    assert launcher.poll(h) is s   # final states are remembered, Slurm is not asked again
    assert sum(c[0] == "show_job" for c in slurm.calls) == 3


def test_failed_job_reports_exit_code_and_the_programs_error(slurm, clock, tmp_path):
    launcher = job_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["python", "x.py"], ["n1"], 2, 60)
    h.output.write_text("iter 1\nTraceback (most recent call last):\nValueError: batch too large\n"
                        "srun: error: n1: task 0: Exited with exit code 3\n")
    slurm.set_job(h.job_id, JobState="FAILED", Reason="NonZeroExitCode", ExitCode="3:0")
    s = launcher.poll(h)
    assert s.status is TrialStatus.FAILED and s.exit_code == 3 and s.signal is None
    assert s.reason == "exit code 3: ValueError: batch too large"


def test_job_killed_by_a_signal_or_a_node_failure(slurm, clock, tmp_path):
    launcher = job_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["x"], ["n1"], 1, 60)
    slurm.set_job(h.job_id, JobState="NODE_FAIL", Reason="NodeDown", ExitCode="0:9")
    s = launcher.poll(h)
    assert s.status is TrialStatus.FAILED and s.signal == 9 and s.reason == "NODE_FAIL, signal 9, NodeDown"


def test_job_over_its_time_limit_is_cancelled_and_reported_as_timeout(slurm, clock, tmp_path):
    launcher = job_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["sleep", "99"], ["n1"], 1, 10)
    slurm.set_job(h.job_id, JobState="RUNNING", RunTime="00:00:00")
    assert launcher.poll(h).status is TrialStatus.RUNNING
    clock.now += 10.5
    s = launcher.poll(h)
    assert ("scancel", h.job_id) in slurm.calls
    assert s.status is TrialStatus.RUNNING          # still running until Slurm has stopped it
    slurm.set_job(h.job_id, JobState="CANCELLED", ExitCode="0:15")
    s = launcher.poll(h)
    assert s.status is TrialStatus.TIMEOUT and s.reason == "exceeded the trial time limit of 10 s"
    assert sum(c[0] == "scancel" for c in slurm.calls) == 1


def test_queue_time_does_not_count_against_the_limit(slurm, clock, tmp_path):
    launcher = job_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["x"], ["n1"], 1, 10)
    clock.now += 500
    assert launcher.poll(h).status is TrialStatus.PENDING
    assert not any(c[0] == "scancel" for c in slurm.calls)


def test_slurms_own_time_limit(slurm, clock, tmp_path):
    launcher = job_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["x"], ["n1"], 1, 10)
    slurm.set_job(h.job_id, JobState="TIMEOUT", ExitCode="0:15")
    s = launcher.poll(h)
    assert s.status is TrialStatus.TIMEOUT and "Slurm's time limit" in s.reason


def test_cancel(slurm, clock, tmp_path):
    launcher = job_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["x"], ["n1"], 1, None)
    assert h.job_id and "--time" not in (tmp_path / "t" / "job.sh").read_text()
    launcher.cancel(h, "a better schedule was found")
    launcher.cancel(h)   # twice is harmless
    assert [c for c in slurm.calls if c[0] == "scancel"] == [("scancel", h.job_id)]
    slurm.set_job(h.job_id, JobState="CANCELLED", ExitCode="0:15")
    s = launcher.poll(h)
    assert s.status is TrialStatus.CANCELLED and s.reason == "a better schedule was found"


def test_someone_elses_scancel(slurm, clock, tmp_path):
    launcher = job_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["x"], ["n1"], 1, 60)
    slurm.set_job(h.job_id, JobState="CANCELLED", ExitCode="0:15")
    s = launcher.poll(h)
    assert s.status is TrialStatus.CANCELLED and "cancelled by Slurm" in s.reason


def test_forgotten_job_from_sacct_then_jobcomp(slurm, clock, tmp_path):
    launcher = job_launcher(slurm, clock)
    a = launcher.submit(tmp_path / "a", ["x"], ["n1"], 1, 60)
    b = launcher.submit(tmp_path / "b", ["x"], ["n1"], 1, 60)
    c = launcher.submit(tmp_path / "c", ["x"], ["n1"], 1, 60)
    slurm.forgotten |= {a.job_id, b.job_id, c.job_id}
    slurm.sacct_rows[a.job_id] = [SacctRow(f"{a.job_id}.batch", "COMPLETED", "0:0", "00:00:01", "n1", ""),
                                  SacctRow(a.job_id, "FAILED", "2:0", "00:00:04", "n1", "NonZeroExitCode")]
    slurm.jobcomp[b.job_id] = parse_record(f"JobId={b.job_id} Name=b JobState=COMPLETED ExitCode=0:0 ")
    sa, sb, sc = launcher.poll(a), launcher.poll(b), launcher.poll(c)
    assert (sa.status, sa.exit_code, sa.elapsed_s) == (TrialStatus.FAILED, 2, 4.0)
    assert sb.ok
    assert sc.status is TrialStatus.FAILED and "no longer knows job" in sc.reason


def test_a_controller_that_does_not_answer_for_a_while(slurm, clock, tmp_path, monkeypatch):
    launcher = job_launcher(slurm, clock, max_query_failures=3)
    h = launcher.submit(tmp_path / "t", ["x"], ["n1"], 1, 5)
    slurm.set_job(h.job_id, JobState="RUNNING")
    assert launcher.poll(h).status is TrialStatus.RUNNING

    def down(*args, **kw):
        raise SlurmError(["scontrol"], "no answer within 30 s")
    monkeypatch.setattr(slurm, "scancel", down)
    clock.now += 10
    assert launcher.poll(h).status is TrialStatus.RUNNING
    assert h.stop_status is None   # past the limit, but scancel failed: it is tried again at the next poll
    monkeypatch.setattr(slurm, "show_job", down)
    s = launcher.poll(h)
    assert s.status is TrialStatus.RUNNING and "Slurm did not answer" in s.reason
    assert launcher.poll(h).status is TrialStatus.RUNNING
    s = launcher.poll(h)
    assert s.status is TrialStatus.FAILED and "did not answer 3 times" in s.reason


def test_wait_polls_until_done(slurm, clock, tmp_path, monkeypatch):
    launcher = job_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["x"], ["n1"], 1, 60)
    polls = iter(["PENDING", "RUNNING", "RUNNING", "COMPLETED"])
    monkeypatch.setattr("hpcps.slurm.launcher.time.sleep", lambda s: slurm.set_job(h.job_id, JobState=next(polls)))
    slurm.set_job(h.job_id, JobState=next(polls))
    assert launcher.wait(h, poll_interval_s=0.01).ok


# ---- steps inside an allocation ----------------------------------------------------------------------

def test_auto_mode_uses_steps_inside_an_allocation(slurm, clock):
    assert step_launcher(slurm, clock).mode == "step"
    assert TrialLauncher(slurm, mpi="pmi2", environ={}).mode == "job"
    with pytest.raises(ValueError, match="SLURM_JOB_ID is not set"):
        TrialLauncher(slurm, mode="step", mpi="pmi2", environ={})
    with pytest.raises(ValueError, match="mode must be"):
        TrialLauncher(slurm, mode="batch", mpi="pmi2", environ={})


def test_step_is_an_srun_in_the_background(slurm, clock, tmp_path):
    launcher = step_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "s p a c e", ["python", "-c", "print(1)"], ["n3", "n4"], 3, 30,
                        {"A": "1"}, rank_nodes=["n3", "n4", "n4"])
    _, argv, env, cwd, output = slurm.calls[0]
    assert argv[0] == "srun" and argv[-3:] == ["python", "-c", "print(1)"]
    assert "--distribution=arbitrary" in argv and "--ntasks=3" in argv and "--nodes=2" in argv
    assert "--time=2" in argv and "--mpi=pmi2" in argv
    assert any(a.startswith("--job-name=hpcps-s_p_a_c_e-") for a in argv)
    assert env == {"A": "1", "SLURM_HOSTFILE": str(tmp_path.resolve() / "s p a c e" / "hostfile")}
    assert cwd == str(h.trial_dir) and output == str(h.output)
    assert "SLURM_NTASKS_PER_NODE" in slurm.unset and "SLURM_CPUS_PER_TASK" in slurm.unset
    assert (h.trial_dir / "command.txt").read_text().startswith("srun ")
    assert launcher.poll(h).status is TrialStatus.PENDING      # srun runs, no step yet
    slurm.steps.append({"StepId": "7.4", "Name": h.job_name, "State": "RUNNING"})
    s = launcher.poll(h)
    assert s.status is TrialStatus.RUNNING and s.slurm_id == "7.4"
    slurm.processes[0].returncode = 0
    s = launcher.poll(h)
    assert s.ok and s.slurm_id == "7.4"


def test_failed_step(slurm, clock, tmp_path):
    launcher = step_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["x"], ["n1"], 1, 30)
    h.output.write_text("hpcps.train: error: jobs/x.toml: file not found\n"
                        "srun: error: n1: task 0: Exited with exit code 2\n")
    slurm.processes[0].returncode = 2
    s = launcher.poll(h)
    assert s.status is TrialStatus.FAILED and s.exit_code == 2
    assert s.reason == "exit code 2: hpcps.train: error: jobs/x.toml: file not found"


def test_step_with_a_killed_rank_says_which_task_died_first(slurm, clock, tmp_path):
    launcher = step_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["x"], ["n1", "n3", "n6"], 3, 30)
    h.output.write_text("srun: error: n3: task 1: Killed\n"
                        "srun: launch/slurm: _step_signal: Terminating StepId=3.0\n"
                        "srun: error: n6: task 2: Terminated\nsrun: error: n1: task 0: Terminated\n"
                        "srun: Force Terminated StepId=3.0\n")
    slurm.processes[0].returncode = 143
    s = launcher.poll(h)
    assert s.status is TrialStatus.FAILED and s.exit_code == 143
    assert s.reason == "exit code 143: srun: error: n3: task 1: Killed"


def test_step_cancelled_after_a_rank_died_is_a_failure_and_a_step_cancelled_outside_is_cancelled(slurm, clock,
                                                                                                  tmp_path):
    launcher = step_launcher(slurm, clock)
    died = launcher.submit(tmp_path / "died", ["x"], ["n1", "n6"], 2, 30)
    died.output.write_text("srun: error: n6: task 1: Killed\n"
                           "slurmstepd-n1: error: *** STEP 3.0 ON n1 CANCELLED AT 2026-11-24T05:51:02 ***\n"
                           "srun: error: n1: task 0: Terminated\n")
    cancelled = launcher.submit(tmp_path / "cancelled", ["x"], ["n1", "n6"], 2, 30)
    cancelled.output.write_text("srun: Job step aborted: Waiting up to 4 seconds for job step to finish.\n"
                                "slurmstepd-n1: error: *** STEP 3.1 ON n1 CANCELLED AT 2026-11-24T05:51:09 ***\n"
                                "srun: error: n1: task 0: Killed\nsrun: error: n6: task 1: Killed\n")
    slurm.processes[0].returncode = slurm.processes[1].returncode = 137
    s = launcher.poll(died)
    assert s.status is TrialStatus.FAILED and s.reason == "exit code 137: srun: error: n6: task 1: Killed"
    s = launcher.poll(cancelled)
    assert s.status is TrialStatus.CANCELLED and s.reason.startswith("cancelled by Slurm: ")


def test_step_over_its_limit_is_cancelled_then_killed_if_srun_hangs(slurm, clock, tmp_path):
    launcher = step_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["sleep", "99"], ["n1"], 1, 5)
    slurm.steps.append({"StepId": "7.0", "Name": h.job_name})
    assert launcher.poll(h).status is TrialStatus.RUNNING
    clock.now += 6
    launcher.poll(h)
    assert ("scancel", "7.0") in slurm.calls
    clock.now += 11
    launcher.poll(h)
    assert slurm.processes[0].killed
    s = launcher.poll(h)
    assert s.status is TrialStatus.TIMEOUT and s.reason == "exceeded the trial time limit of 5 s"
    assert s.signal == 9


def test_cancel_before_the_step_exists_signals_srun(slurm, clock, tmp_path):
    launcher = step_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["x"], ["n1"], 1, 30)
    launcher.cancel(h)
    assert slurm.processes[0].signals == [signal.SIGTERM]
    slurm.processes[0].returncode = 143
    s = launcher.poll(h)
    assert s.status is TrialStatus.CANCELLED and s.reason == "cancelled by the tuner"


def test_step_stopped_by_slurms_step_limit(slurm, clock, tmp_path):
    launcher = step_launcher(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["x"], ["n1"], 1, 30)
    h.output.write_text("slurmstepd-n1: error: *** STEP 7.0 ON n1 CANCELLED AT 2026-11-24T04:08:12 "
                        "DUE TO TIME LIMIT ***\n")
    slurm.processes[0].returncode = 1
    assert launcher.poll(h).status is TrialStatus.TIMEOUT


# ---- which MPI plugin --------------------------------------------------------------------------------

@pytest.mark.parametrize("version,plugin", [
    ("MPICH Version:      5.0.2\nMPICH Release date: ...", "pmi2"),
    ("Open MPI v5.0.8, package: Open MPI ...", "pmix"),
    ("Intel(R) MPI Library 2021.10 for Linux* OS", "pmi2"),
])
def test_mpi_plugin_from_library_version(version, plugin):
    assert plugin_for_library(version) == plugin
    assert srun_mpi_plugin({}, version) == plugin


def test_mpi_plugin_override():
    assert srun_mpi_plugin({"HPCPS_SRUN_MPI": "pmix"}, "MPICH Version: 5") == "pmix"
    assert TrialLauncher(FakeSlurm(), mode="job", mpi="none", environ={}).mpi is None


def test_nothing_else_touches_a_subprocess():
    """Only client.py may start processes (the rest of hpcps.slurm is pure or goes through the client)."""
    pkg = Path(__file__).resolve().parents[2] / "hpcps" / "slurm"
    for path in pkg.glob("*.py"):
        if path.name != "client.py":
            text = path.read_text()
            assert "import subprocess" not in text and "os.system" not in text, f"{path.name} runs processes"


@pytest.mark.parametrize("kind", ["step", "job"])
def test_the_exit_code_is_the_first_failed_tasks_not_sruns_highest(slurm, clock, tmp_path, kind):
    """Rank 0 exits 3; srun stops rank 1, which ends on SIGTERM (143), and returns the highest status of
    its tasks: the trial failed with 3, as srun's line for the first task says."""
    launcher = (step_launcher if kind == "step" else job_launcher)(slurm, clock)
    h = launcher.submit(tmp_path / "t", ["x"], ["n4", "n5"], 2, 30)
    h.output.write_text("srun: error: n4: task 0: Exited with exit code 3\n"
                        "srun: error: n5: task 1: Exited with exit code 143\n")
    if kind == "step":
        slurm.processes[0].returncode = 143
    else:
        slurm.set_job(h.job_id, JobState="FAILED", Reason="NonZeroExitCode", ExitCode="143:0")
    s = launcher.poll(h)
    assert s.status is TrialStatus.FAILED and s.exit_code == 3
    assert s.reason == "exit code 3: srun: error: n4: task 0: Exited with exit code 3"
