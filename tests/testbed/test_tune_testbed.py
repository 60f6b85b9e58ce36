"""python -m hpcps.tune --backend testbed: trials as MPI runs on testbeds, with everything the other real
backends give: traces, a failing trial recorded with its reason, a trial past its time limit stopped,
and --resume going on without repeating a trial. No testbed is left behind by any of them."""

from __future__ import annotations

import csv
import json
import os
import subprocess

from hpcps.cluster.placement import load_node_schedule
from hpcps.testbed.plan import PREFIX
from hpcps.testbed.runner import NetRunner
from hpcps.trace import open_trace
from tests.conftest import assert_no_leftovers
from tests.testbed.conftest import PY, ROOT

CLUSTER = """name = "tb3"
[types.fast]
speed = 2.0
cores = 2
nic_gbps = 1.0
latency_us = 50.0
[types.slow]
speed = 0.5
cores = 2
nic_gbps = 0.5
latency_us = 100.0
[[nodes]]
names = "f1"
type = "fast"
[[nodes]]
names = "s[1-2]"
type = "slow"
"""


def job_text(cluster, workload="digits", data=""):
    return (f'name = "tb3-digits"\nworkload = "{workload}"\ncluster = "{cluster}"\n[model]\nhidden = 64\n'
            f'{data}[optimizer]\nname = "sgd"\nlr = 0.1\n[training]\nglobal_batch = 48\niterations = 4\n'
            'log_every = 100\n')


def tune(tmp_path, out, *args, job=None, timeout=600):
    cluster = tmp_path / "tb3.toml"
    cluster.write_text(CLUSTER)
    if job is None:
        job = tmp_path / "job.toml"
        job.write_text(job_text(cluster))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([PY, "-m", "hpcps.tune", "--backend", "testbed", "--job", str(job), "--strategy",
                           "heuristic", "--out", str(out), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def rows(out):
    return list(csv.DictReader((out / "trials.csv").read_text().splitlines()))


def no_testbeds_left():
    runner = NetRunner()
    assert not [ns for ns in runner.netns_list() if ns.startswith(PREFIX + "t")], runner.netns_list()
    assert not [link for link in runner.links() if link.startswith(PREFIX + "t")]


def test_trials_run_on_the_testbed_and_resume_goes_on(tmp_path):
    out = tmp_path / "run"
    r = tune(tmp_path, out, "--budget", "1", "--iterations", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    first = rows(out)
    assert len(first) == 1 and first[0]["status"] == "ok" and float(first[0]["iteration_time_s"]) > 0, first
    r = tune(tmp_path, out, "--budget", "2", "--iterations", "4", "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming" in r.stdout and "1 trial(s) done, 1 to go" in r.stdout
    both = rows(out)
    assert [x["trial"] for x in both] == ["1", "2"] and both[0] == first[0] and both[1]["status"] == "ok", both
    for k in (1, 2):
        tdir = out / "trials" / f"{k:04d}"
        cmd = (tdir / "command.txt").read_text()
        assert "-m hpcps.testbed run" in cmd and "--dilation 4 " in cmd        # 2 * the fastest speed
        trace = open_trace(tdir / "trace.h5")
        assert trace.attrs["emulation_network"] == "real" and trace.attrs["emulation_dilation"] == 4.0
        schedule = load_node_schedule(tdir / "schedule.toml")
        used = sorted(p.name for p in schedule.nodes if p.n_ranks)
        # Each rank ran in its node's namespace, under the node's name.
        assert sorted(set(trace.rank_field("host").values())) == used
        assert sorted(set(trace.rank_field("node_name").values())) == used
    assert (out / "best_schedule.toml").is_file()
    no_testbeds_left()


def test_a_trial_the_testbed_could_not_keep_up_with_says_so_in_trials_csv_and_the_final_report(tmp_path):
    # At dilation 1 the fast node (speed 2) would step in half the time this machine takes: every step
    # overruns, and hpcps.train says so.
    out = tmp_path / "undilated"
    r = tune(tmp_path, out, "--budget", "1", "--iterations", "6", "--dilation", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    [row] = rows(out)
    assert row["status"] == "ok", row
    log = (out / "trials" / "0001" / "output.log").read_text()
    assert "emulated steps ran longer here than on their node" in row["warnings"], (row, log)
    assert row["warnings"] == " | ".join(ln.strip() for ln in log.splitlines() if ": warning: " in ln), (row, log)
    assert "1 of 1 measured trial(s) warned that this machine could not keep up" in r.stdout, r.stdout
    assert "raise --dilation" in r.stdout, r.stdout
    no_testbeds_left()


def test_a_failing_trial_and_a_trial_past_its_time_limit_are_recorded(tmp_path):
    cluster = tmp_path / "tb3.toml"
    cluster.write_text(CLUSTER)
    job = tmp_path / "faulty.toml"
    job.write_text(job_text(cluster, "tests.fixtures.faulty_workload:factory",
                            "[data]\nfail_rank = 1\nfail_call = 2\n"))
    out = tmp_path / "faulty"
    r = tune(tmp_path, out, "--budget", "1", "--iterations", "4", job=job)
    assert r.returncode == 0, r.stdout + r.stderr
    [row] = rows(out)
    assert row["status"].startswith("exit code ") and "cannot read shard 7" in row["status"], row
    assert row["iteration_time_s"] == ""
    no_testbeds_left()

    out = tmp_path / "slow"
    r = tune(tmp_path, out, "--budget", "1", "--iterations", "100000", "--timeout", "20")
    assert r.returncode == 0, r.stdout + r.stderr
    [row] = rows(out)
    assert row["status"] == "timeout: exceeded the trial time limit of 20 s", row
    assert "no trial gave a time" in r.stdout
    no_testbeds_left()
    assert_no_leftovers(str(out), grace_s=15)
    state = json.loads((out / "state.json").read_text())
    assert len(state["trials"]) == 1
