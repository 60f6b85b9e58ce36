"""The local backend without MPI: a stand-in mpiexec that writes a made-up trace, fails, or hangs; a
trial's processes ending with the tuner, with a stop request, and before a resumed run reruns the trial;
and the trace-to-observations adapter on a trace with known phase times."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpcps.cluster import load_cluster
from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker
from hpcps.config import load_job
from hpcps.trace import open_trace
from hpcps.trace.metadata import RunInfo
from hpcps.trace.schema import PHASE, empty
from hpcps.trace.writer import TraceWriter
from hpcps.tune.backends.local import TRIAL_ENV, LocalBackend
from hpcps.tune.loop import Settings, TuningRun
from hpcps.tune.observations import from_trace
from hpcps.tune.problem import problem_for
from hpcps.tune.strategies import make_strategy

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "jobs/clusters/hetero8.toml"
JOB = ROOT / "jobs/hetero8.toml"

# rank: (node, type, batch, server, compute, data, pull window, pull wait, push window, push wait, aggregate)
RANKS = {0: ("n1", "gpu-fast", 40, True, 0.010, 0.001, 0.004, 0.001, 0.006, 0.002, 0.0015),
         1: ("n3", "cpu-mid", 16, False, 0.012, 0.001, 0.005, 0.002, 0.003, 0.0005, 0.0),
         2: ("n6", "cpu-slow", 8, False, 0.020, 0.002, 0.007, 0.000, 0.004, 0.001, 0.0)}
ITER_S = 0.030


def write_trace(path: Path, iterations: int = 5) -> None:
    ranks = [{"rank": r, "host": "h", "node_name": v[0], "node_type": v[1],
              "role": "server+worker" if v[3] else "worker", "device": "cpu", "threads": 1, "batch": v[2],
              "pid": 1, "clock_offset_s": 0.0, "clock_rtt_s": 0.0} for r, v in RANKS.items()]
    shards = np.zeros(1, dtype=[("shard", "<i4"), ("server", "<i4"), ("start", "<i8"), ("stop", "<i8"),
                                ("nbytes", "<i8")])
    shards[0] = (0, 0, 0, 100, 400)
    w = TraceWriter(path, RunInfo("test"), ranks=ranks, shards=shards, versions={}, t0_unix_s=0.0, attrs={})
    rows = []
    for it in range(iterations):
        t = it * ITER_S
        for r, (_, _, k, server, comp, data, pull, pwait, push, qwait, agg) in RANKS.items():
            rows.append((r, it, PHASE["iteration"], t, t + ITER_S, k, np.nan))
            rows.append((r, it, PHASE["pull"], t, t + pull, 0, np.nan))
            rows.append((r, it, PHASE["wait"], t, t + pwait, 0, np.nan))
            c0 = t + pull
            rows.append((r, it, PHASE["data"], c0, c0 + data, k, np.nan))
            rows.append((r, it, PHASE["compute"], c0 + data, c0 + data + comp, k, 1.0))
            p0 = c0 + data + comp
            rows.append((r, it, PHASE["push"], p0, p0 + push, 0, np.nan))
            rows.append((r, it, PHASE["wait"], p0, p0 + qwait, 0, np.nan))
            if server:
                rows.append((r, it, PHASE["aggregate"], p0 + push, p0 + push + agg, 0, np.nan))
    events = empty("events", len(rows))
    for i, row in enumerate(rows):
        events[i] = row
    w.append(events, empty("transfers"), final=True)
    w.close(True)


def test_observations_from_a_trace_are_phase_times_without_waits(tmp_path):
    path = tmp_path / "t.h5"
    write_trace(path)
    cluster = load_cluster(CLUSTER)
    obs = from_trace(cluster, open_trace(path), skip_iterations=1)
    assert sorted(set(obs["iteration"].tolist())) == [1, 2, 3, 4]
    for r, (node, typ, k, server, comp, data, pull, pwait, push, qwait, agg) in RANKS.items():
        o = obs[obs["rank"] == r]
        assert len(o) == 4
        assert (o["node"] == cluster.index(node)).all() and (o["batch"] == k).all()
        assert (o["server"] == server).all()
        assert cluster.types[o["type"][0]].name == typ
        np.testing.assert_allclose(o["compute_s"], comp + data, rtol=1e-6)
        np.testing.assert_allclose(o["pull_s"], pull - pwait, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(o["push_s"], push - qwait, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(o["aggregate_s"], agg, atol=1e-9)


SCHEDULE = NodeSchedule((NodePlan("n1", True, (NodeWorker(40),)), NodePlan("n3", False, (NodeWorker(16),)),
                         NodePlan("n6", False, (NodeWorker(8),))))


def fake_mpiexec(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "fake-mpiexec"
    exe.write_text("#!/bin/bash\n" + body)
    exe.chmod(0o755)
    return str(exe)


def backend(tmp_path, mpiexec, timeout_s=60.0):
    return LocalBackend(load_cluster(CLUSTER), load_job(JOB), JOB, CLUSTER, iterations=5, timeout_s=timeout_s,
                        mpiexec=mpiexec)


def test_a_trial_reads_its_time_and_observations_from_its_trace(tmp_path):
    made = tmp_path / "made.h5"
    write_trace(made)
    # The stand-in copies the made-up trace to where --trace points, after checking the command line.
    exe = fake_mpiexec(tmp_path, f'''
[ "$1" = "-n" ] && [ "$2" = "3" ] || {{ echo "bad ranks: $*"; exit 9; }}
while [ $# -gt 0 ]; do [ "$1" = "--trace" ] && cp {made} "$2"; shift; done
''')
    trial = tmp_path / "trial"
    trial.mkdir()
    r = backend(tmp_path, exe).run_trial(trial, SCHEDULE, 1)
    assert r.status == "ok", r.status
    assert r.iteration_time_s == pytest.approx(ITER_S)
    assert len(r.iteration_times_s) == 3                 # 5 iterations less 2 of start-up
    assert set(r.observations["iteration"].tolist()) == {2, 3, 4}
    assert r.trace_path == str(trial.resolve() / "trace.h5")
    assert "hpcps.train" in (trial / "command.txt").read_text()
    assert (trial / "schedule.toml").is_file()


def test_a_trial_keeps_the_warnings_of_hpcps_train_and_hpcps_testbed_once_each_and_nothing_else(tmp_path):
    made = tmp_path / "made.h5"
    write_trace(made)
    overran = ("hpcps.train: warning: 15 of 200 emulated steps ran longer here than on their node (by 22.9 ms "
               "emulated in all); raise --time-dilation for a faithful emulation")
    steal = "hpcps.testbed: warning: the machine's host took 6% of its CPU time during the run (steal)"
    exe = fake_mpiexec(tmp_path, f'''
echo "{overran}"
echo "/x/site-packages/torch/foo.py:1: UserWarning: warning: not ours" >&2
echo "{steal}   " >&2
echo "{overran}"
while [ $# -gt 0 ]; do [ "$1" = "--trace" ] && cp {made} "$2"; shift; done
''')
    trial = tmp_path / "trial"
    trial.mkdir()
    r = backend(tmp_path, exe).run_trial(trial, SCHEDULE, 1)
    assert r.status == "ok", r.status
    assert r.warnings == (overran, steal)


def test_a_crashing_trial_reports_the_error_line(tmp_path):
    exe = fake_mpiexec(tmp_path, 'echo "rank 2: Traceback (most recent call last)"\n'
                                 'echo "ValueError: the loss is nan"\necho "MPI_Abort"\nexit 1\n')
    trial = tmp_path / "trial"
    trial.mkdir()
    r = backend(tmp_path, exe).run_trial(trial, SCHEDULE, 1)
    assert r.status == "exit code 1: ValueError: the loss is nan"
    assert r.iteration_time_s is None


def test_a_trial_out_of_memory_says_so(tmp_path):
    exe = fake_mpiexec(tmp_path, 'echo "hpcps.train: error: out of memory on node n6 (type cpu-slow)" >&2\nexit 2\n')
    trial = tmp_path / "trial"
    trial.mkdir()
    r = backend(tmp_path, exe).run_trial(trial, SCHEDULE, 1)
    assert r.status == "exit code 2: hpcps.train: error: out of memory on node n6 (type cpu-slow)"


def test_a_trial_past_its_time_limit_is_stopped_with_everything_it_started(tmp_path):
    pidfile = tmp_path / "child.pid"
    exe = fake_mpiexec(tmp_path, f'sleep 300 &\necho $! > {pidfile}\nwait\n')
    trial = tmp_path / "trial"
    trial.mkdir()
    t0 = time.monotonic()
    r = backend(tmp_path, exe, timeout_s=1.0).run_trial(trial, SCHEDULE, 1)
    assert r.status == "timeout: exceeded the trial time limit of 1 s"
    assert time.monotonic() - t0 < 15
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the trial's child process outlived the timeout")


def test_a_trial_without_a_trace_is_an_error(tmp_path):
    exe = fake_mpiexec(tmp_path, "exit 0\n")
    trial = tmp_path / "trial"
    trial.mkdir()
    r = backend(tmp_path, exe).run_trial(trial, SCHEDULE, 1)
    assert r.status.startswith("error: unusable trace")



def gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether process pid has ended (or is a zombie) within within_s."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


# A stand-in mpiexec that runs a "rank" in the background and, like mpiexec, ends it when told to stop.
HANGING = '''trap 'kill $rank; exit 143' TERM
sleep 300 &
rank=$!
echo $$ $rank > {pids}
wait
'''


def test_command_txt_is_the_command_shell_quoted(tmp_path):
    where = tmp_path / "my jobs; it's here"
    where.mkdir()
    cluster, job = shutil.copy(CLUSTER, where / "cluster.toml"), shutil.copy(JOB, where / "job.toml")
    exe = fake_mpiexec(tmp_path, "exit 0\n")
    trial = tmp_path / "trial"
    trial.mkdir()
    b = LocalBackend(load_cluster(cluster), load_job(job), Path(job), Path(cluster), iterations=5, mpiexec=exe)
    b.run_trial(trial, SCHEDULE, 1)
    words = shlex.split((trial / "command.txt").read_text())
    assert words[0] == exe and words[1:3] == ["-n", "3"]
    assert words[words.index("--cluster") + 1] == str(Path(cluster).resolve())
    assert words[words.index("--job") + 1] == str(Path(job).resolve())


def test_a_stop_request_ends_the_running_trial(tmp_path):
    pids = tmp_path / "pids"
    b = backend(tmp_path, fake_mpiexec(tmp_path, HANGING.format(pids=pids)))
    t0 = time.monotonic()
    b.watch_stop(lambda: "SIGTERM" if pids.is_file() else None)
    trial = tmp_path / "trial"
    trial.mkdir()
    r = b.run_trial(trial, SCHEDULE, 1)
    assert r.status == "cancelled: the tuner was stopped (SIGTERM)"
    assert time.monotonic() - t0 < 15
    assert all(gone(int(p)) for p in pids.read_text().split())


def test_a_trial_ends_when_the_tuner_is_killed(tmp_path):
    """kill -9 of the process running a trial: the trial's mpiexec gets SIGTERM from the kernel (and
    ends its ranks) instead of running on with no one to stop it."""
    pids = tmp_path / "pids"
    exe = fake_mpiexec(tmp_path, HANGING.format(pids=pids))
    trial = tmp_path / "trial"
    trial.mkdir()
    tuner = subprocess.Popen([sys.executable, "-c", f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from tests.unit.test_tune_local_backend import SCHEDULE, backend
backend(Path({str(tmp_path)!r}), {exe!r}, timeout_s=600).run_trial(Path({str(trial)!r}), SCHEDULE, 1)
"""])
    try:
        deadline = time.monotonic() + 60
        while not pids.is_file() or len(pids.read_text().split()) < 2:
            assert time.monotonic() < deadline and tuner.poll() is None
            time.sleep(0.05)
    finally:
        tuner.kill()
        tuner.wait()
    pid_list = [int(p) for p in pids.read_text().split()]
    try:
        assert all(gone(p) for p in pid_list)
    finally:
        for p in pid_list:                       # a failure leaves nothing behind
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_resumed_run_ends_what_an_earlier_attempt_at_the_trial_left(tmp_path):
    """A tuner that died while trial 1 ran left a rank running in trials/0001 (marked with that
    directory): before trial 1 runs again there, the rank is ended."""
    cluster, job = load_cluster(CLUSTER), load_job(JOB)
    problem = problem_for(cluster, job)
    out = tmp_path / "run"
    trial_dir = out / "trials" / "0001"
    trial_dir.mkdir(parents=True)
    orphan = subprocess.Popen(["sleep", "300"], env={**os.environ, TRIAL_ENV: str(trial_dir.resolve())},
                              start_new_session=True)
    (trial_dir / "launch.json").write_text(json.dumps({"pid": orphan.pid, "host": os.uname().nodename}))
    made = tmp_path / "made.h5"
    write_trace(made)
    exe = fake_mpiexec(tmp_path, f'while [ $# -gt 0 ]; do [ "$1" = "--trace" ] && cp {made} "$2"; shift; done\n')
    b = LocalBackend(cluster, job, JOB, CLUSTER, iterations=5, mpiexec=exe)
    settings = Settings(job=str(JOB), cluster=str(CLUSTER), backend="local", strategy="random", seed=0, budget=1,
                        cluster_name=cluster.name, global_batch=problem.global_batch)
    run = TuningRun(out, settings, problem, make_strategy("random", problem), b, echo=lambda s: None)
    try:
        rec = run.step()
        assert orphan.poll() == -signal.SIGTERM
        assert rec is not None and rec.ok, rec
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
