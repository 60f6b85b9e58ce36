"""python -m hpcps.sim in-process (main): the --json object's keys and values, the table's label, and
the exact error lines of an impossible schedule and of a staleness without ssp."""

import json
from pathlib import Path

from tests.unit.test_sim_cli import sim

ROOT = Path(__file__).resolve().parents[2]
HETERO8 = str(ROOT / "jobs/clusters/hetero8.toml")
JOB = str(ROOT / "jobs/default.toml")
PROFILES = str(ROOT / "hpcps/sim/profiles.toml")


def test_the_json_object(capsys, monkeypatch):
    monkeypatch.delenv("HPCPS_PROFILES", raising=False)
    code, out, err = sim(capsys, "--cluster", HETERO8, "--schedule", "naive", "--json", "--iterations", "2",
                         "--noise", "0.1", "--straggler-prob", "0.25", "--straggler-slowdown", "2", "--seed", "3",
                         "--sharing", "equal", "--resolution", "0.0001")
    assert code == 0 and err == ""
    got = json.loads(out)
    assert {k: got[k] for k in ("cluster", "cluster_file", "schedule", "job", "workload", "params", "profiles")} == {
        "cluster": "hetero8", "cluster_file": HETERO8, "schedule": "naive", "job": "digits", "workload": "digits",
        "params": 9610, "profiles": PROFILES}
    assert got["options"] == {"iterations": 2, "noise_sigma": 0.1, "straggler_prob": 0.25, "straggler_slowdown": 2.0,
                              "seed": 3, "sharing": "equal", "resolution_s": 0.0001, "bucket_mb": 4.0,
                              "overlap": True, "steady_state": False, "sync": "bsp", "staleness": 0}
    assert got["status"] == "ok" and len(got["iteration_times_s"]) == 2


def test_the_table_names_the_schedule(capsys):
    code, out, _ = sim(capsys, "--cluster", HETERO8, "--schedule", "balanced")
    assert code == 0 and out.startswith("cluster hetero8 (8 nodes), job digits (workload digits, 9610 parameters), "
                                        "schedule balanced: ")


def test_an_impossible_schedule_is_one_line_naming_it(tmp_path, capsys):
    huge = tmp_path / "h.toml"
    job = tmp_path / "job.toml"
    job.write_text(Path(JOB).read_text().replace("global_batch = 64", "global_batch = 8000000"))
    huge.write_text('[[nodes]]\nname = "n6"\nserver = true\nworkers = [{batch = 8000000}]\n')
    code, out, err = sim(capsys, "--cluster", HETERO8, "--schedule", str(huge), "--job", str(job))
    assert code == 2 and out == ""
    assert err.startswith(f"hpcps.sim: error: {huge}: the schedule cannot run on {HETERO8}: out of memory on node n6")
    assert err.count("\n") == 1


def test_a_staleness_without_ssp_names_where_the_mode_came_from(capsys):
    code, _, err = sim(capsys, "--cluster", HETERO8, "--job", JOB, "--staleness", "2")
    assert code == 2 and err == ("hpcps.sim: error: --staleness: applies to ssp only, got --staleness 2 with "
                                 f"sync 'bsp' ({JOB}: training.sync)\n")
    code, _, err = sim(capsys, "--cluster", HETERO8, "--staleness", "2", "--sync", "asp")
    assert code == 2 and err == ("hpcps.sim: error: --staleness: applies to ssp only, got --staleness 2 with sync "
                                 "'asp' (--sync)\n")
