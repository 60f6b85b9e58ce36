"""The tuner through the real local Slurm (python -m hpcps.tune --backend slurm, slurm/tune.sh): trials as
job steps of the tuning job on the emulated heterogeneous cluster, a trial that crashes, a trial past its
time limit (as its own sbatch job, the tuner outside an allocation), and the tuning job stopped (SIGTERM
before its time limit, requeue, scancel) and resumed without losing or repeating a trial.

Trials run hpcps.train on the digits job for a few iterations; on a busy 2-core machine a trial of 3
ranks takes some 20 s and one of 8 ranks some 40 s, mostly starting Python."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from hpcps.cluster import load_cluster
from hpcps.cluster.placement import load_node_schedule
from hpcps.slurm import SlurmClient
from hpcps.slurm.nodes import compress_hostlist
from hpcps.slurm.parse import classify_state
from hpcps.slurm.script import literal_filename
from hpcps.trace import open_trace
from tests.conftest import assert_no_leftovers, processes_mentioning
from tests.slurm.conftest import run_slurm

ROOT = Path(__file__).resolve().parents[2]
HETERO8 = ROOT / "jobs" / "clusters" / "hetero8.toml"
PY = sys.executable


def digits_job(tmp_path: Path, cluster: Path) -> Path:
    job = tmp_path / "digits.toml"
    job.write_text(f'name = "digits-slurm"\nworkload = "digits"\ncluster = "{cluster}"\n'
                   '[model]\nhidden = 32\n[optimizer]\nname = "sgd"\nlr = 0.1\n'
                   '[training]\nglobal_batch = 64\niterations = 4\nlog_every = 100\n')
    return job


def three_node_cluster(tmp_path: Path) -> Path:
    """hetero8's node types on three of its nodes (one of each type): trials of 3 ranks."""
    text = HETERO8.read_text()
    text = text[:text.index("[[nodes]]")].replace('name = "hetero8"', 'name = "hetero3"')
    text += "".join(f'[[nodes]]\nnames = "{n}"\ntype = "{t}"\n\n'
                    for n, t in (("n1", "gpu-fast"), ("n3", "cpu-mid"), ("n6", "cpu-slow")))
    path = tmp_path / "hetero3.toml"
    path.write_text(text)
    return path


def submit_tune(local_slurm, tmp_path: Path, out: Path, job: Path, *args: str, sbatch: tuple[str, ...] = (),
                budget: int = 2, strategy: str | None = "heuristic") -> str:
    env = dict(local_slurm.env, HPCPS_OUT=str(out), HPCPS_BUDGET=str(budget))
    if strategy:
        env["HPCPS_STRATEGY"] = strategy
    r = run_slurm(local_slurm, "sbatch", "--parsable", f"--output={literal_filename(str(tmp_path))}/tune-%j.out",
                  *sbatch, "slurm/tune.sh", str(job), *args, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def follow(client, job_id: str, until=None, timeout_s: float = 300.0):
    """Poll the job until it ends (or until() is true): its record and every step seen running,
    {step id: record}. Cancels the job and fails on timeout."""
    deadline = time.monotonic() + timeout_s
    steps: dict[str, dict[str, str]] = {}
    while True:
        for s in client.show_steps(job_id):
            if s.get("StepId", "").split(".")[-1].isdigit():
                steps.setdefault(s["StepId"], s)
        rec = client.show_job(job_id)
        if until is not None and until(steps):
            return rec, steps
        if classify_state(rec["JobState"]) not in ("PENDING", "RUNNING"):
            return rec, steps
        if time.monotonic() > deadline:
            client.scancel(job_id)
            pytest.fail(f"tuning job {job_id} still {rec['JobState']} after {timeout_s:.0f} s")
        time.sleep(0.3)


def rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "trials.csv").read_text().splitlines()))


def state_trials(out: Path) -> list[dict]:
    path = out / "state.json"
    return json.loads(path.read_text())["trials"] if path.is_file() else []


def slurm_record(out: Path, trial: int) -> dict:
    return json.loads((out / "trials" / f"{trial:04d}" / "slurm.json").read_text())


def running_step(name_prefix: str):
    return lambda steps: any(s.get("Name", "").startswith(name_prefix) for s in steps.values())


def log_of(tmp_path: Path, job_id: str) -> str:
    path = tmp_path / f"tune-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else "(no output file)"


def slurm_log_lines(local_slurm, job_id: str) -> str:
    """What the controller and the node daemons logged about a job (for failure messages)."""
    lines = []
    for path in sorted((local_slurm.scratch / "log").glob("slurm*.log")):
        for ln in path.read_text(errors="replace").splitlines():
            if f"JobId={job_id} " in ln or ln.endswith(f"JobId={job_id}") or f"job {job_id}" in ln \
                    or f"[{job_id}." in ln or f"StepId={job_id}." in ln or "error" in ln.lower():
                lines.append(f"{path.name}: {ln}")
    return "\n".join(sorted(lines, key=lambda x: x.split(": ", 1)[1]))


def no_step_daemons(local_slurm, grace_s: float = 15.0) -> None:
    deadline = time.monotonic() + grace_s
    while local_slurm.step_daemon_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not local_slurm.step_daemon_pids(), "slurmstepd processes still running"


def link_bytes(plan) -> dict[str, int]:
    """Bytes each node's shaped NIC has sent (tc's count on the htb qdisc at the root of its eth0)."""
    out = {}
    for n in plan.nodes:
        text = subprocess.run(["tc", "-s", "-n", n.netns, "qdisc", "show", "dev", "eth0"], capture_output=True,
                              text=True).stdout
        root = text.split("qdisc htb 1: root", 1)[1]
        out[n.node] = int(root.split("Sent ", 1)[1].split(" bytes", 1)[0])
    return out


@pytest.fixture(params=["localhost", "testbed"])
def tune_slurm(request):
    """The tuning test on both local Slurms: fake nodes on localhost (the network emulated) and slurmds
    on the nodes of a testbed (ranks talk through its shaped links)."""
    return request.getfixturevalue("local_slurm" if request.param == "localhost" else "testbed_slurm")


def test_tune_script_runs_each_trial_as_a_job_step(tune_slurm, tmp_path):
    """sbatch slurm/tune.sh on the emulated hetero8 cluster: every trial a job step of the tuning job on
    its schedule's nodes (seen in scontrol show step and in slurmd's log); table, traces, best schedule.
    On the testbed, the ranks run in their nodes' namespaces and their messages cross the shaped links."""
    local_slurm = tune_slurm
    slurm_client = SlurmClient(env=local_slurm.env)
    on_testbed = local_slurm.plan is not None
    sent_before = link_bytes(local_slurm.plan) if on_testbed else None
    job = digits_job(tmp_path, HETERO8)
    out = tmp_path / "tune out"
    job_id = submit_tune(local_slurm, tmp_path, out, job, "--iterations", "4", "--timeout", "300",
                         sbatch=("--nodes=8",), budget=2)
    rec, steps = follow(slurm_client, job_id, timeout_s=420)
    log = log_of(tmp_path, job_id)
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", log
    assert rec["NodeList"] == "n[1-8]" and rec["BatchHost"] == "n1"
    assert "trial 2/2 [heuristic]" in log and "best schedule:" in log, log
    rs = rows(out)
    assert [r["trial"] for r in rs] == ["1", "2"] and all(r["status"] == "ok" for r in rs), rs
    assert all(float(r["iteration_time_s"]) > 0 for r in rs)
    slurmd_logs = "".join(p.read_text(errors="replace") for p in (local_slurm.scratch / "log").glob("slurmd-*.log"))
    cluster = load_cluster(HETERO8)
    for k in (1, 2):
        tdir = out / "trials" / f"{k:04d}"
        schedule = load_node_schedule(tdir / "schedule.toml")
        nodes = [p.name for p in schedule.nodes if p.n_ranks]
        record = slurm_record(out, k)
        assert record["mode"] == "step" and record["job_id"] == job_id and record["status"] == "COMPLETED"
        sid = record["slurm_id"]
        assert sid in steps, (sid, steps)                 # Slurm listed the step while it ran
        assert steps[sid]["Name"].startswith(f"hpcps-trial-{k:04d}")
        assert steps[sid]["NodeList"] == compress_hostlist(nodes) == record["nodes"]
        assert int(steps[sid]["Tasks"]) == schedule.n_ranks
        assert f"launch task StepId={sid} " in slurmd_logs
        trace = open_trace(tdir / "trace.h5")
        assert len(trace.iterations) > 0
        assert sorted({r["node_name"] for r in trace.ranks}) == sorted(nodes)
        if on_testbed:
            assert trace.attrs["emulation_network"] == "real"
            assert trace.attrs["emulation_dilation"] == local_slurm.plan.dilation
            assert sorted(set(trace.rank_field("host").values())) == sorted(nodes)     # each in its namespace
        else:
            assert trace.attrs["emulation_network"] == "fabric"
    if on_testbed:
        # Every worker pushed its gradient (9,640 bytes, 4 iterations) through its node's link in trial 1 at least.
        sent = link_bytes(local_slurm.plan)
        assert all(sent[n] - sent_before[n] > 4 * 9640 for n in sent), (sent_before, sent)
    best = load_node_schedule(out / "best_schedule.toml")
    best.check_against(cluster, 64)
    assert slurm_client.jobcomp_record(job_id)["JobState"] == "COMPLETED"
    assert_no_leftovers(str(out))


def test_a_crashing_trial_is_recorded_and_the_search_goes_on(local_slurm, slurm_client, tmp_path):
    """A rank of trial 1 dies (SIGKILL, as the kernel's OOM killer would): the step ends at once, the
    trial is recorded with srun's word for it, and trial 2 runs."""
    job = digits_job(tmp_path, three_node_cluster(tmp_path))
    out = tmp_path / "crash run"
    job_id = submit_tune(local_slurm, tmp_path, out, job, "--iterations", "4", "--timeout", "300",
                         sbatch=("--nodes=3", "--nodelist=n1,n3,n6"), budget=2)
    marker = str(out / "trials" / "0001" / "trace.h5")
    deadline = time.monotonic() + 180
    victim = None
    while victim is None:
        assert time.monotonic() < deadline, "trial 1's ranks never started\n" + log_of(tmp_path, job_id)
        for pid in processes_mentioning(marker):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"hpcps.train" in argv and not argv[0].endswith(b"srun"):
                victim = pid
                break
        time.sleep(0.1)
    os.kill(victim, signal.SIGKILL)
    rec, _ = follow(slurm_client, job_id, timeout_s=300)
    log = log_of(tmp_path, job_id)
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", log
    rs = rows(out)
    assert [r["trial"] for r in rs] == ["1", "2"], rs
    assert rs[0]["status"].startswith("exit code ") and "task" in rs[0]["status"] and "Killed" in rs[0]["status"], rs
    assert rs[0]["iteration_time_s"] == "" and rs[1]["status"] == "ok", rs
    assert slurm_record(out, 1)["status"] == "FAILED"
    assert "1 failed: trial 1: exit code" in log
    assert load_node_schedule(out / "best_schedule.toml") is not None
    assert_no_leftovers(str(out))


def test_a_trial_past_its_time_limit_is_stopped_and_recorded(local_slurm, slurm_client, tmp_path):
    """The tuner outside an allocation: the trial is its own sbatch job; past --timeout it is cancelled,
    recorded as a timeout, and nothing of it is left running."""
    job = digits_job(tmp_path, three_node_cluster(tmp_path))
    out = tmp_path / "timeout run"
    t0 = time.monotonic()
    r = subprocess.run([PY, "-m", "hpcps.tune", "--backend", "slurm", "--job", str(job), "--strategy", "heuristic",
                        "--budget", "1", "--out", str(out), "--iterations", "100000", "--timeout", "3"],
                       capture_output=True, text=True, cwd=ROOT, env=local_slurm.env, timeout=240)
    assert r.returncode == 0, r.stderr
    rs = rows(out)
    assert len(rs) == 1 and rs[0]["status"] == "timeout: exceeded the trial time limit of 3 s", rs
    record = slurm_record(out, 1)
    assert record["mode"] == "job" and record["status"] == "TIMEOUT"
    assert slurm_client.show_job(record["job_id"])["JobState"] == "CANCELLED"   # Slurm's record of the trial job
    assert slurm_client.jobcomp_record(record["job_id"])["JobState"] == "CANCELLED"
    assert time.monotonic() - t0 < 120
    assert "no trial gave a time" in r.stdout
    assert_no_leftovers(str(out))


def test_stopped_requeued_cancelled_and_resumed_without_losing_or_repeating_a_trial(local_slurm, slurm_client,
                                                                                     tmp_path):
    """The tuning job (budget 2) is stopped three ways while trial 2 runs: SIGTERM to the batch shell (what
    --signal=B:TERM@120 sends before the time limit: the tuner cancels its trial, saves and exits 0), then
    requeued (it restarts with --resume), then scancel'd; finally a new job with --resume finishes it.
    Trial 1 is kept throughout and never runs again; trial 2 is recorded once, by the last job."""
    job = digits_job(tmp_path, three_node_cluster(tmp_path))
    out = tmp_path / "resumed run"
    sbatch = ("--nodes=3", "--nodelist=n1,n3,n6")
    args = ("--iterations", "4", "--timeout", "300")
    job_id = submit_tune(local_slurm, tmp_path, out, job, *args, sbatch=sbatch)
    # 1. SIGTERM to the batch shell while trial 2 runs.
    rec, _ = follow(slurm_client, job_id, until=running_step("hpcps-trial-0002"), timeout_s=240)
    assert classify_state(rec["JobState"]) == "RUNNING", log_of(tmp_path, job_id)
    assert len(state_trials(out)) == 1
    first = state_trials(out)[0]
    assert run_slurm(local_slurm, "scancel", "--batch", "--signal=TERM", job_id).returncode == 0
    rec, _ = follow(slurm_client, job_id, timeout_s=120)
    log = log_of(tmp_path, job_id)
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", log
    assert "hpcps.tune: SIGTERM: stopped with 1 trial(s) saved" in log, log
    assert state_trials(out) == [first]
    stopped = slurm_record(out, 2)
    assert stopped["status"] == "CANCELLED" and stopped["reason"] == "the tuner was stopped (SIGTERM)"
    assert_no_leftovers(str(out))

    # 2. Requeued: the job starts again and resumes; scancel it while trial 2 runs. slurmd refuses a job
    # whose new credential is from the same second as the end of its last run ("Job 1 already killed, do
    # not launch batch job"; Slurm's own requeue delay of minutes avoids that): requeue a little later.
    no_step_daemons(local_slurm)
    end = datetime.strptime(rec["EndTime"], "%Y-%m-%dT%H:%M:%S").timestamp()
    while time.time() < end + 2.5:
        time.sleep(0.1)
    assert run_slurm(local_slurm, "scontrol", "requeue", job_id).returncode == 0
    # A requeued job waits two minutes before it may start again; let it start now.
    assert run_slurm(local_slurm, "scontrol", "update", f"JobId={job_id}", "StartTime=now").returncode == 0
    rec, _ = follow(slurm_client, job_id, until=running_step("hpcps-trial-0002"), timeout_s=240)
    assert rec["Restarts"] == "1" and classify_state(rec["JobState"]) == "RUNNING", \
        log_of(tmp_path, job_id) + "\n" + str(rec) + "\n" + slurm_log_lines(local_slurm, job_id)
    assert "resuming" in log_of(tmp_path, job_id)
    assert run_slurm(local_slurm, "scancel", job_id).returncode == 0
    rec, _ = follow(slurm_client, job_id, timeout_s=120)
    assert rec["JobState"] == "CANCELLED", log_of(tmp_path, job_id)
    assert state_trials(out) == [first]
    assert_no_leftovers(str(out), grace_s=15)
    no_step_daemons(local_slurm)

    # 3. A new job with --resume finishes the run.
    again = submit_tune(local_slurm, tmp_path, out, job, *args, "--resume", sbatch=sbatch)
    rec, _ = follow(slurm_client, again, timeout_s=240)
    log = log_of(tmp_path, again)
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", log
    assert "resuming" in log and "1 trial(s) done, 1 to go" in log, log
    trials = state_trials(out)
    assert [t["trial"] for t in trials] == [1, 2] and trials[0] == first
    assert [r["trial"] for r in rows(out)] == ["1", "2"] and all(r["status"] == "ok" for r in rows(out))
    assert slurm_record(out, 1)["job_id"] == job_id          # trial 1 ran once, in the first job
    assert slurm_record(out, 2)["job_id"] == again and slurm_record(out, 2)["status"] == "COMPLETED"
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0001", "0002"]
    assert_no_leftovers(str(out))
