"""Against a real Slurm (the throw-away local one of conftest.py): the batch scripts, trials as sbatch
jobs and as srun steps, time limits, failures, and the cluster file from scontrol show node."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from hpcps.cluster import load_cluster
from hpcps.slurm import TrialLauncher, TrialStatus
from hpcps.slurm.parse import parse_nodes
from hpcps.slurm.script import format_command, literal_filename
from tests.conftest import assert_no_leftovers
from tests.slurm.conftest import run_slurm, wait_for_job

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RANKS = str(HERE / "mpi_ranks.py")
PY = sys.executable


@pytest.fixture
def odd_dir(tmp_path) -> Path:
    """A directory whose name has a space, both quotes and a percent sign."""
    d = tmp_path / "runs 1" / "it's \"odd\" 50%"
    d.mkdir(parents=True)
    return d


def launcher_for(local_slurm, client) -> TrialLauncher:
    return TrialLauncher(client, mode="job", environ=local_slurm.env, kill_grace_s=10)


def test_nodes_are_up_and_named_like_the_bundled_cluster(local_slurm, slurm_client):
    nodes = parse_nodes(slurm_client.show_nodes())
    assert [n.name for n in nodes] == local_slurm.node_names
    assert local_slurm.bringup_s < 30, f"the local Slurm took {local_slurm.bringup_s:.1f} s to start"


def test_train_script_runs_a_short_training(local_slurm, slurm_client, odd_dir):
    r = run_slurm(local_slurm, "sbatch", "--parsable", "--nodes=2", "--ntasks=3", "--time=5",
                  f"--output={literal_filename(str(odd_dir))}/train-%j.out",
                  "slurm/train.sh", "jobs/default.toml", "--iterations", "5", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    rec = wait_for_job(slurm_client, job_id, timeout_s=240)
    log = odd_dir / f"train-{job_id}.out"
    text = log.read_text() if log.exists() else "(no output file)"
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", text
    assert rec["NodeList"] == "n[1-2]" and rec["NumTasks"] == "3"
    assert "srun --mpi=pmi2" in text and "3 ranks" in text
    assert "done: 5 iterations" in text


def test_trial_job_places_ranks_on_the_named_nodes(local_slurm, slurm_client, odd_dir):
    launcher = launcher_for(local_slurm, slurm_client)
    h = launcher.submit(odd_dir / "trial 0", [PY, RANKS], ["n3", "n6"], 4, 60, {"HPCPS_TEST": "a 'b'"},
                        rank_nodes=["n3", "n3", "n3", "n6"])
    state = launcher.wait(h, poll_interval_s=0.2, timeout_s=120)
    text = h.output.read_text()
    assert state.status is TrialStatus.COMPLETED, f"{state}\n{text}"
    assert state.exit_code == 0 and state.slurm_id == h.job_id
    assert sorted(ln for ln in text.splitlines() if ln.startswith("rank ")) == [
        "rank 0/4 on n3", "rank 1/4 on n3", "rank 2/4 on n3", "rank 3/4 on n6"]
    rec = slurm_client.show_job(h.job_id)
    # scontrol shows the output pattern as given: the path with '%' doubled; the file itself is h.output.
    assert rec["WorkDir"] == str(h.trial_dir) and rec["StdOut"] == str(h.output).replace("%", "%%")
    comp = slurm_client.jobcomp_record(h.job_id)
    assert comp["JobState"] == "COMPLETED" and comp["WorkDir"] == str(h.trial_dir)


def test_crashing_trial_is_failed_with_its_exit_code(local_slurm, slurm_client, odd_dir):
    launcher = launcher_for(local_slurm, slurm_client)
    h = launcher.submit(odd_dir / "crash", [PY, RANKS, "--exit-code", "3"], ["n4", "n5"], 2, 60)
    state = launcher.wait(h, poll_interval_s=0.2, timeout_s=120)
    assert state.status is TrialStatus.FAILED, f"{state}\n{h.output.read_text()}"
    assert state.exit_code == 3        # not srun's 143 when it stopped rank 1 with SIGTERM first
    # The rank's own line, or, when srun stopped the job before forwarding that rank's last output
    # (seen once in several runs), srun's line for it: both name the task's status.
    assert state.reason in ("exit code 3: rank 0: error: exiting with status 3 as asked",
                            "exit code 3: srun: error: n4: task 0: Exited with exit code 3"), state.reason


def test_trial_past_its_time_limit_is_stopped_as_timeout(local_slurm, slurm_client, odd_dir):
    marker = str(odd_dir / "slow-marker")
    launcher = launcher_for(local_slurm, slurm_client)
    h = launcher.submit(odd_dir / "slow", [PY, "-c", "import time; time.sleep(300)", marker], ["n7"], 2, 2)
    t0 = time.monotonic()
    state = launcher.wait(h, poll_interval_s=0.2, timeout_s=60)
    assert state.status is TrialStatus.TIMEOUT, f"{state}\n{h.output.read_text()}"
    assert state.reason == "exceeded the trial time limit of 2 s"
    assert time.monotonic() - t0 < 2 + local_slurm.kill_wait_s + 10
    assert slurm_client.show_job(h.job_id)["JobState"] == "CANCELLED"
    assert_no_leftovers(marker)


def test_cancelled_trial(local_slurm, slurm_client, odd_dir):
    marker = str(odd_dir / "cancel-marker")
    launcher = launcher_for(local_slurm, slurm_client)
    h = launcher.submit(odd_dir / "cancel", [PY, "-c", "import time; time.sleep(300)", marker], ["n8"], 1, 60)
    while launcher.poll(h).status is not TrialStatus.RUNNING:
        time.sleep(0.1)
    launcher.cancel(h, "stopped by the test")
    state = launcher.wait(h, poll_interval_s=0.2, timeout_s=60)
    assert state.status is TrialStatus.CANCELLED and state.reason == "stopped by the test"
    assert_no_leftovers(marker)


def test_trials_as_steps_inside_an_allocation(local_slurm, slurm_client, tmp_path):
    out = tmp_path / "alloc dir 'x'"
    out.mkdir()
    marker = str(out / "step-marker")
    wrap = format_command([PY, str(HERE / "step_trials.py"), str(out), marker])
    # --ntasks-per-node=1 and -c 1 as a tuning job might ask: trial steps start without them.
    r = run_slurm(local_slurm, "sbatch", "--parsable", "--nodelist=n1,n2,n3", "--nodes=3", "--exclusive",
                  "--ntasks-per-node=1", "--cpus-per-task=1",
                  f"--output={out}/alloc.out", f"--wrap={wrap}", cwd=str(out))
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    rec = wait_for_job(slurm_client, job_id, timeout_s=180)
    log = (out / "alloc.out").read_text() if (out / "alloc.out").exists() else ""
    assert rec["JobState"] == "COMPLETED", log
    result = json.loads((out / "result.json").read_text())
    assert result["mode"] == "step" and result["allocation"] == job_id
    ok = result["ok"]
    assert ok["status"] == "COMPLETED" and ok["exit_code"] == 0, ok["output"]
    assert ok["seen_running"] == ok["slurm_id"] == f"{job_id}.0"   # scontrol show step listed it
    assert sorted(ln for ln in ok["output"].splitlines() if ln.startswith("rank ")) == [
        "rank 0/3 on n1", "rank 1/3 on n2", "rank 2/3 on n2"]
    slow = result["slow"]
    assert slow["status"] == "TIMEOUT" and slow["reason"] == "exceeded the trial time limit of 2 s"
    assert slow["slurm_id"] == f"{job_id}.1" and slow["elapsed_s"] < 15
    assert "ntasks-per-node" not in slow["output"], slow["output"]   # srun's "can't honor" warning
    assert_no_leftovers(marker)
    assert slurm_client.jobcomp_record(job_id)["JobState"] == "COMPLETED"


def test_tune_script_passes_sigterm_to_the_tuner(local_slurm, slurm_client, tmp_path):
    """slurm/tune.sh with a stand-in tuner: arguments as documented, SIGTERM to the batch shell
    (what --signal=B:TERM@120 sends) reaches the tuner, which saves and exits 0."""
    fake = tmp_path / "fake venv"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "activate").write_text(f'export PATH={format_command([str(fake / "bin")])}:"$PATH"\n')
    (fake / "bin" / "python").write_text(
        "#!/bin/bash\n"
        'printf "%s\\n" "$@" > "$FAKE_DIR/args"\n'
        "trap 'echo saved > \"$FAKE_DIR/saved\"; exit 0' TERM\n"
        'touch "$FAKE_DIR/started"\n'
        "while :; do sleep 0.1; done\n")
    (fake / "bin" / "python").chmod(0o755)
    env = dict(local_slurm.env, HPCPS_VENV=str(fake), FAKE_DIR=str(tmp_path), HPCPS_BUDGET="7")
    r = run_slurm(local_slurm, "sbatch", "--parsable", "--nodes=2", f"--output={tmp_path}/tune.out",
                  "slurm/tune.sh", "jobs/my job.toml", "--seed", "3", cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the stand-in tuner never started"
        time.sleep(0.1)
    sig = run_slurm(local_slurm, "scancel", "--batch", "--signal=TERM", job_id)
    assert sig.returncode == 0, sig.stderr
    rec = wait_for_job(slurm_client, job_id, timeout_s=60)
    assert (tmp_path / "saved").exists(), (tmp_path / "tune.out").read_text()
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0"
    args = (tmp_path / "args").read_text().splitlines()
    assert args == ["-m", "hpcps.tune", "--backend", "slurm", "--job", "jobs/my job.toml", "--strategy", "structured",
                    "--budget", "7", "--out", f"results/runs/tune-{job_id}", "--seed", "3"]


def test_cluster_file_from_the_local_slurm(local_slurm, tmp_path):
    out = tmp_path / "from slurm.toml"
    r = run_slurm(local_slurm, PY, "-m", "hpcps.cluster", "--from-slurm", "--out", str(out), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    got, want = load_cluster(out), load_cluster(ROOT / "jobs" / "clusters" / "hetero8.toml")
    assert got.name == "hpcps-local" and got.names == want.names
    assert [(n.type.name, n.type.cores, n.type.gpus, n.type.memory_gb) for n in got.nodes] == \
           [(n.type.name, n.type.cores, n.type.gpus, n.type.memory_gb) for n in want.nodes]
