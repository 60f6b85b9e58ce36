"""python -m hpcps.sim as users and scripts call it: a subprocess for the contract (JSON out, exit 2 and
one line on bad input, nothing written), main() in-process for the rest, to keep the suite fast."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpcps.cluster.placement import load_node_schedule
from hpcps.sim.cli import main

ROOT = Path(__file__).resolve().parents[2]
HETERO8 = str(ROOT / "jobs/clusters/hetero8.toml")
JOB = str(ROOT / "jobs/default.toml")


def run(*args):
    return subprocess.run([sys.executable, "-m", "hpcps.sim", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_json_output():
    p = run("--cluster", HETERO8, "--schedule", "naive", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["iteration_time_s"] > 0 and out["status"] == "ok" and out["feasible"] is True
    assert out["cluster"] == "hetero8" and out["schedule"] == "naive" and out["workload"] == "digits"
    assert len(out["ranks"]) == 8 and out["n_servers"] == 1 and out["global_batch"] == 64
    assert {"compute_s", "pull_s", "push_s", "aggregate_s", "wait_s", "node"} <= set(out["ranks"][0])


def test_the_jobs_exchange_settings_reach_the_simulator(capsys, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(Path(JOB).read_text() + "\n[exchange]\nbucket_mb = 0.01\noverlap = false\n")
    code, out, _ = sim(capsys, "--cluster", HETERO8, "--schedule", "naive", "--job", str(job), "--json",
                       "--steady-state", "--iterations", "2")
    assert code == 0
    got = json.loads(out)
    assert got["options"]["bucket_mb"] == 0.01 and got["options"]["overlap"] is False
    assert got["options"]["steady_state"] is True and len(got["iteration_times_s"]) == 2


def test_the_jobs_sync_and_the_flags_over_it(capsys, tmp_path):
    def result(*extra, job=JOB):
        code, out, err = sim(capsys, "--cluster", HETERO8, "--schedule", "naive", "--job", str(job), "--json",
                             "--iterations", "3", *extra)
        assert code == 0, err
        return json.loads(out)
    stale = tmp_path / "ssp.toml"
    stale.write_text(Path(JOB).read_text().replace("[training]", '[training]\nsync = "ssp"\nstaleness = 2'))
    from_job = result(job=stale)
    assert (from_job["options"]["sync"], from_job["options"]["staleness"]) == ("ssp", 2)
    assert result("--sync", "ssp", "--staleness", "2")["iteration_time_s"] == from_job["iteration_time_s"]
    assert result("--sync", "asp", job=stale)["options"]["staleness"] == 0      # another mode starts from 0
    assert result("--staleness", "1", job=stale)["options"]["staleness"] == 1
    bsp = result()
    assert bsp["options"]["sync"] == "bsp" and result("--sync", "bsp", job=stale) == bsp
    assert result("--sync", "asp")["iteration_time_s"] < bsp["iteration_time_s"]
    code, out, _ = sim(capsys, "--cluster", HETERO8, "--schedule", "naive", "--sync", "asp")
    assert code == 0 and "asp: iteration time" in out and "iter_ms" in out


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(HETERO8).read_text().replace("cores = 8", "cores = 8\nturbo = true"))
    out = tmp_path / "saved.toml"
    p = run("--cluster", str(bad), "--schedule", "naive", "--json", "--save-schedule", str(out))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1
    assert str(bad) in p.stderr and "types.gpu-fast.turbo" in p.stderr and "Valid keys are: speed" in p.stderr
    assert not out.exists()


def test_help():
    p = run("--help")
    assert p.returncode == 0 and "--cluster" in p.stdout and "--json" in p.stdout and "naive" in p.stdout


def sim(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_table_output(capsys):
    code, out, err = sim(capsys, "--cluster", HETERO8, "--schedule", "balanced", "--job", JOB)
    assert code == 0 and err == ""
    assert "iteration time" in out and "samples/s" in out and "n8" in out


def test_schedule_files_of_both_kinds_and_saving(tmp_path, capsys):
    saved = tmp_path / "b.toml"
    code, out, _ = sim(capsys, "--cluster", HETERO8, "--schedule", "balanced", "--json", "--save-schedule", str(saved))
    assert code == 0
    balanced = json.loads(out)
    assert load_node_schedule(saved).global_batch == 64
    code, out, _ = sim(capsys, "--cluster", HETERO8, "--schedule", str(saved), "--json")
    assert code == 0 and json.loads(out)["iteration_time_s"] == balanced["iteration_time_s"]
    ranks = tmp_path / "r.toml"
    ranks.write_text("servers = [0]\n" + "".join(f"[[workers]]\nrank = {r}\nbatch = 8\n" for r in range(8)))
    code, out, _ = sim(capsys, "--cluster", HETERO8, "--schedule", str(ranks), "--json")
    assert code == 0 and [r["node"] for r in json.loads(out)["ranks"]] == [f"n{i}" for i in range(1, 9)]
    code, _, err = sim(capsys, "--cluster", HETERO8, "--schedule", str(ranks), "--save-schedule",
                       str(tmp_path / "x.toml"))
    assert code == 2 and "only a node schedule can be saved" in err and not (tmp_path / "x.toml").exists()


def test_noise_and_stragglers_change_the_result(capsys):
    def t(*extra):
        code, out, _ = sim(capsys, "--cluster", HETERO8, "--json", *extra)
        assert code == 0
        return json.loads(out)["iteration_time_s"]
    quiet = t()
    assert t("--noise", "0.3", "--seed", "1") == t("--noise", "0.3", "--seed", "1") != quiet
    assert t("--straggler-prob", "1", "--straggler-slowdown", "4") > quiet


@pytest.mark.parametrize("args, words", [
    (["--cluster", "nope.toml"], "nope.toml: file not found"),
    (["--cluster", HETERO8, "--schedule", "missing.toml"], "missing.toml: file not found"),
    (["--cluster", HETERO8, "--job", "nojob.toml"], "nojob.toml: file not found"),
    (["--cluster", HETERO8, "--iterations", "0"], "--iterations: must be >= 1"),
    (["--cluster", HETERO8, "--noise", "-0.1"], "--noise: must be >= 0"),
    (["--cluster", HETERO8, "--straggler-prob", "2"], "--straggler-prob: must be >= 0 and <= 1"),
    (["--cluster", HETERO8, "--straggler-slowdown", "0.5"], "--straggler-slowdown: must be >= 1"),
    (["--cluster", HETERO8, "--profiles", "noprof.toml"], "noprof.toml: compute profiles not found"),
    (["--cluster", HETERO8, "--save-schedule", "/no/such/dir/s.toml"], "does not exist"),
    (["--schedule", "naive"], "no cluster: give --cluster FILE"),
    (["--cluster", HETERO8, "--sharing", "fifo"], "invalid choice"),
    (["--cluster", HETERO8, "--noise", "nan"], "--noise: must be a finite number >= 0"),
    (["--cluster", HETERO8, "--noise", "1e9"], "--noise: must be >= 0 and <= 5"),
    (["--cluster", HETERO8, "--straggler-slowdown", "inf"], "--straggler-slowdown: must be a finite number"),
    (["--cluster", HETERO8, "--seed", "-1"], "--seed: must be >= 0"),
    (["--cluster", HETERO8, "--iterations", "100000000"], "--iterations: must be >= 1 and <= 10000"),
    (["--cluster", HETERO8, "--resolution", "nan"], "--resolution: must be a finite number"),
    (["--cluster", HETERO8, "--save-schedule", HETERO8], "is also an input of this command"),
    (["--cluster", HETERO8, "--save-schedule", JOB], "is also an input of this command"),
    (["--cluster", HETERO8, "--save-schedule", "/dev/full"], "not a regular file"),
    (["--cluster", str(ROOT / "jobs")], "is a directory, not a TOML file"),
    (["--cluster", HETERO8, "--sync", "bulk"],
     "argument --sync: invalid choice: 'bulk' (choose from 'bsp', 'ssp', 'asp')"),
    (["--cluster", HETERO8, "--sync", "ssp", "--staleness", "-1"], "--staleness: must be >= 0 and <= 1000, got -1"),
    (["--cluster", HETERO8, "--sync", "ssp", "--staleness", "2.5"], "argument --staleness: invalid int value"),
    (["--cluster", HETERO8, "--staleness", "2"], "--staleness: applies to ssp only, got --staleness 2 with sync 'bsp'"),
    (["--cluster", HETERO8, "--sync", "asp", "--staleness", "1"], "applies to ssp only"),
])
def test_bad_arguments(capsys, args, words):
    code, out, err = sim(capsys, *args)
    assert code == 2 and out == "" and words in err


def test_impossible_schedules(tmp_path, capsys):
    wrong_batch = tmp_path / "s.toml"
    wrong_batch.write_text('[[nodes]]\nname = "n1"\nserver = true\nworkers = [{batch = 5}]\n')
    code, _, err = sim(capsys, "--cluster", HETERO8, "--schedule", str(wrong_batch))
    assert code == 2 and "sum to 5" in err and "global_batch is 64" in err
    unknown = tmp_path / "u.toml"
    unknown.write_text('[[nodes]]\nname = "z9"\nserver = true\nworkers = [{batch = 64}]\n')
    code, _, err = sim(capsys, "--cluster", HETERO8, "--schedule", str(unknown))
    assert code == 2 and "'z9' is not in cluster 'hetero8'" in err
    huge = tmp_path / "h.toml"                   # a slow node has 4 GB; a million digits samples do not fit
    job = tmp_path / "job.toml"
    job.write_text(Path(JOB).read_text().replace("global_batch = 64", "global_batch = 8000000"))
    huge.write_text('[[nodes]]\nname = "n6"\nserver = true\nworkers = [{batch = 8000000}]\n')
    code, out, err = sim(capsys, "--cluster", HETERO8, "--schedule", str(huge), "--job", str(job), "--json")
    assert code == 2 and out == "" and "out of memory on node n6" in err


def test_the_jobs_cluster_key_is_used(tmp_path, capsys):
    job = tmp_path / "job.toml"
    job.write_text(f'cluster = "{HETERO8}"\n' + Path(JOB).read_text())
    code, out, _ = sim(capsys, "--job", str(job), "--json")
    assert code == 0 and json.loads(out)["cluster"] == "hetero8"
