"""python -m hpcps.tune as a user runs it: outputs, resume after a kill, and every bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcps.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
JOB = str(ROOT / "jobs/cifar.toml")
CLUSTER = str(ROOT / "jobs/clusters/hetero10a.toml")


def env(extra=None):
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.setdefault("OMP_NUM_THREADS", "1")
    e.pop("HPCPS_TUNE_STOP_AFTER", None)
    e.update(extra or {})
    return e


def tune(*args, extra_env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "hpcps.tune", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env(extra_env))


def base(out, strategy="anneal", budget=6, *more):
    return ["--job", JOB, "--cluster", CLUSTER, "--backend", "sim", "--strategy", strategy, "--budget", str(budget),
            "--out", str(out), "--iterations", "3", *more]


def rows(out):
    return list(csv.DictReader((out / "trials.csv").read_text().splitlines()))


def comparable(rs):
    """What must not change between an unbroken and a resumed run (timings aside)."""
    return [(r["trial"], r["status"], r["iteration_time_s"], r["schedule"], r["note"]) for r in rs]


def test_a_sim_run_leaves_its_table_best_schedule_and_plot(tmp_path):
    out = tmp_path / "run"
    r = tune(*base(out, "heuristic", 4))
    assert r.returncode == 0, r.stderr
    assert "trial 4/4 [heuristic]" in r.stdout and "speed-up" in r.stdout
    rs = rows(out)
    assert [x["trial"] for x in rs] == ["1", "2", "3", "4"]
    for col in ("trial", "strategy", "status", "iteration_time_s", "predicted_s", "schedule"):
        assert col in rs[0]
    # hpcps.sim accepts the best schedule, and it is the fastest measured.
    sim = subprocess.run([sys.executable, "-m", "hpcps.sim", "--cluster", CLUSTER, "--job", JOB, "--schedule",
                          str(out / "best_schedule.toml"), "--json"], capture_output=True, text=True, cwd=ROOT,
                         env=env(), timeout=120)
    assert sim.returncode == 0, sim.stderr
    assert json.loads(sim.stdout)["iteration_time_s"] > 0
    assert (out / "convergence.png").stat().st_size > 1000
    assert (out / "trials" / "0001" / "observations.json").is_file()


def test_resume_after_a_hard_exit_loses_and_repeats_nothing(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert tune(*base(whole)).returncode == 0
    killed = tune(*base(broken), extra_env={"HPCPS_TUNE_STOP_AFTER": "3"})
    assert killed.returncode == 137
    assert [r["trial"] for r in rows(broken)] == ["1", "2", "3"]
    again = tune(*base(broken))
    assert again.returncode == 2 and "--resume" in again.stderr          # no silent overwrite
    resumed = tune(*base(broken), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "3 trial(s) done" in resumed.stdout
    assert comparable(rows(broken)) == comparable(rows(whole))


def test_resume_after_sigkill_mid_run(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hpcps.tune", *base(out, "random", 40)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while True:
            state = out / "state.json"
            if state.is_file() and len(json.loads(state.read_text())["trials"]) >= 2:
                break
            assert time.monotonic() < deadline and proc.poll() is None, "the run never got to 2 trials"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    # state.json is the record (trials.csv is rewritten from it after each trial, and may lag by one).
    before = json.loads((out / "state.json").read_text())["trials"]
    assert len(before) >= 2
    resumed = tune(*base(out, "random", 40), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = json.loads((out / "state.json").read_text())["trials"]
    assert [t["trial"] for t in after] == list(range(1, 41))
    assert after[:len(before)] == before
    assert [r["trial"] for r in rows(out)] == [str(i) for i in range(1, 41)]


def test_sigterm_saves_and_exits_zero(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "hpcps.tune", *base(out, "random", 100000)], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "trials.csv").is_file():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM" in err and "--resume" in err
    n = len(rows(out))
    assert len(json.loads((out / "state.json").read_text())["trials"]) == n >= 1


def _tiny_memory_cluster(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text('[types.t]\nspeed = 1.0\ncores = 2\nnic_gbps = 1.0\nmemory_gb = 0.1\n\n'
                 '[[nodes]]\nnames = "n[1-2]"\ntype = "t"\n')
    return str(p)


def _no_cluster_job(tmp_path):
    p = tmp_path / "job.toml"
    p.write_text(Path(JOB).read_text())
    return str(p)


BAD = {
    "missing job": (["--job", "nope.toml"], "nope.toml: file not found"),
    "no cluster": (["--job", "<nocluster>"], "no cluster: give --cluster FILE"),
    "missing cluster": (["--cluster", "nope.toml"], "nope.toml: file not found"),
    "zero budget": (["--budget", "0"], "--budget: must be >= 1, got 0"),
    "negative seed": (["--seed", "-1"], "--seed: must be >= 0"),
    "zero iterations": (["--iterations", "0"], "--iterations: must be >= 1"),
    "bad timeout": (["--timeout", "0"], "--timeout: must be > 0"),
    "endless timeout": (["--timeout", "inf"], "--timeout: must be a finite number > 0 and <= 1e+07"),
    "seed past 32 bits": (["--seed", str(2**32)], "--seed: must be >= 0 and <= 4294967295"),
    "unknown strategy": (["--strategy", "magic"], "invalid choice: 'magic'"),
    "unknown backend": (["--backend", "cloud"], "invalid choice: 'cloud'"),
    "budget not a number": (["--budget", "many"], "invalid int value: 'many'"),
    "batch fits nowhere": (["--cluster", "<tiny>"], "fits on no schedule"),
    "out is a file": (["--out", "<file>"], "exists and is not a directory"),
    "out under a file": (["--out", "/dev/null/out"], "--out: cannot create /dev/null/out: /dev/null is not a "
                                                     "directory"),
    # Refused when it is made as root (who may write into /proc, but no folder can be made there).
    "out where no folder can be made": (["--out", "/proc/hpcps-out"], "--out: cannot create /proc/hpcps-out: "),
    "out not empty": (["--out", "<full>"], "is not empty and holds no tuning run"),
    "unknown codec": (["--codecs", "none,int4"],
                      "--codecs: unknown codec 'int4'; allowed: none, fp16, bf16, int8, sign, topk"),
    "empty codec list": (["--codecs", ""], "--codecs: give codec names separated by commas, from none, fp16"),
    "empty codec name": (["--codecs", "none,,int8"], "--codecs: give codec names separated by commas"),
    "codec twice": (["--codecs", "none,int8,int8"], "--codecs: lists 'int8' more than once"),
    "codecs without the job's": (["--codecs", "int8,sign"], "--codecs: must include the job's own codec 'none'"),
    "ssp without staleness": (["--syncs", "bsp,ssp"], "--syncs: unknown synchronisation 'ssp' (ssp needs its "
                              "staleness: ssp1, ssp2, ...); allowed: bsp, asp, or sspN with N an integer from 1"),
    "ssp0": (["--syncs", "bsp,ssp0"], "--syncs: unknown synchronisation 'ssp0'; allowed: bsp, asp, or sspN"),
    "unknown sync": (["--syncs", "bsp,async"], "--syncs: unknown synchronisation 'async'; allowed: bsp, asp"),
    "empty sync list": (["--syncs", ""], "--syncs: give synchronisations separated by commas: bsp, asp, or sspN"),
    "empty sync name": (["--syncs", "bsp,,asp"], "--syncs: give synchronisations separated by commas"),
    "sync twice": (["--syncs", "bsp,asp,asp"], "--syncs: lists 'asp' more than once"),
    "syncs without the job's": (["--syncs", "ssp1,asp"], "--syncs: must include the job's own synchronisation 'bsp'"),
    "dilation off the testbed": (["--dilation", "30"], "--dilation: only the testbed backend has one, not sim"),
    "dilation below 1": (["--backend", "testbed", "--dilation", "0.5"], "--dilation: must be a number >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    change, message = BAD[case]
    args = {"--job": JOB, "--cluster": CLUSTER, "--backend": "sim", "--strategy": "random", "--budget": "3",
            "--out": str(tmp_path / "out")}
    flags = list(change)
    for i in range(0, len(flags), 2):
        value = flags[i + 1]
        if value == "<nocluster>":
            value = _no_cluster_job(tmp_path)
            args.pop("--cluster")
        elif value == "<tiny>":
            value = _tiny_memory_cluster(tmp_path)
        elif value == "<file>":
            value = str(tmp_path / "a_file")
            Path(value).write_text("x")
        elif value == "<full>":
            value = str(tmp_path / "full")
            Path(value).mkdir()
            (Path(value) / "notes.txt").write_text("mine")
        args[flags[i]] = value
    argv = [x for kv in args.items() for x in kv]
    before = sorted(p.name for p in tmp_path.iterdir())
    # In-process (an interpreter per case would be slow); the exit status is main's or argparse's.
    from hpcps.tune.cli import main
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    assert rc == 2, captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcps.tune: error: "), captured.err
    assert message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "out").exists()


def test_sim_iterations_have_hpcps_sims_bound(tmp_path):
    # Checked by prepare(), before any trial: a trial is not stopped part-way, even by SIGTERM, so one of
    # 10**20 simulated iterations would run for ever.
    from hpcps.tune.cli import build_parser, prepare
    args = build_parser().parse_args(base(tmp_path / "out", "random", 1)[:-2] + ["--iterations", str(10**20)])
    with pytest.raises(ConfigError) as e:
        prepare(args)
    assert str(e.value) == f"--iterations: must be >= 1 and <= 10000, got {10**20}"
    assert not (tmp_path / "out").exists()
    args.iterations = 10_000
    assert prepare(args).backend.iterations == 10_000


@pytest.mark.parametrize("value", ["abc", "nan", "1.5", "-1"])
def test_a_stop_after_that_is_no_trial_number_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys,
                                                                                    value):
    from hpcps.tune.cli import main
    monkeypatch.setenv("HPCPS_TUNE_STOP_AFTER", value)
    assert main(base(tmp_path / "out", "random", 1)) == 2
    assert capsys.readouterr().err.startswith("hpcps.tune: error: HPCPS_TUNE_STOP_AFTER: must be ")
    assert not (tmp_path / "out").exists()


def test_slurm_backend_needs_the_cluster_files_nodes_in_its_allocation(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "login[1-2]")
    from hpcps.tune.cli import main
    rc = main(["--job", JOB, "--cluster", CLUSTER, "--backend", "slurm", "--strategy", "random", "--budget", "2",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"hpcps.tune: error: {CLUSTER}: key 'nodes': node(s) ")
    assert "are not in this allocation (job 77, nodes login[1-2])" in err[0]
    assert not (tmp_path / "out").exists()


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "run"
    assert tune(*base(out, "random", 2)).returncode == 0
    before = (out / "state.json").read_text()
    r = tune(*base(out, "anneal", 4), "--resume")
    assert r.returncode == 2
    assert "strategy = 'random'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "state.json").read_text() == before


def test_help():
    r = tune("--help")
    assert r.returncode == 0
    for word in ("--backend", "--strategy", "--budget", "--resume", "structured", "heuristic"):
        assert word in r.stdout


def test_resume_refuses_a_job_file_changed_since_the_run_began(tmp_path):
    """The same job file edited in place (global batch 64 -> 32): resuming would mix trials of both
    problems in one run, and the best schedule (batches summing to 64) would not load for the job."""
    job = tmp_path / "job.toml"
    job.write_text(Path(JOB).read_text())
    out = tmp_path / "run"
    args = ["--job", str(job), "--cluster", CLUSTER, "--backend", "sim", "--strategy", "random", "--out", str(out),
            "--iterations", "2"]
    assert tune(*args, "--budget", "2").returncode == 0
    before = (out / "state.json").read_text()
    text = job.read_text()
    assert "global_batch = 64" in text
    job.write_text(text.replace("global_batch = 64", "global_batch = 32"))
    r = tune(*args, "--budget", "4", "--resume")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcps.tune: error: --resume: ")
    assert f"the job file {job} changed since the run in {out} began" in lines[0]
    assert (out / "state.json").read_text() == before
    job.write_text(text)                           # put back: the run goes on
    r = tune(*args, "--budget", "3", "--resume")
    assert r.returncode == 0, r.stderr
    assert [x["trial"] for x in rows(out)] == ["1", "2", "3"]


def test_a_second_tuner_in_the_same_out_is_refused(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "hpcps.tune", *base(out, "random", 100000)], cwd=ROOT, env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "trials.csv").is_file():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        for more in ((), ("--resume",)):
            second = tune(*base(out, "random", 100000), *more)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and f"{out} is in use by another tuning run (pid {first.pid} on " in lines[0], lines
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    n = len(json.loads((out / "state.json").read_text())["trials"])
    assert [r["trial"] for r in rows(out)] == [str(i) for i in range(1, n + 1)]
    resumed = tune(*base(out, "random", n + 1), "--resume")        # the lock went with the first tuner
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize("holds", ["nothing", "an empty directory"])
def test_resume_where_there_is_no_run_is_refused(tmp_path, capsys, holds):
    out = tmp_path / "run"
    if holds == "an empty directory":
        out.mkdir()
    from hpcps.tune.cli import main
    rc = main([*base(out, "random", 2), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("hpcps.tune: error: --resume: ")
    assert ("does not exist: there is no run to resume" if holds == "nothing" else "holds no tuning run") in err[0]
    assert (not out.exists()) if holds == "nothing" else list(out.iterdir()) == []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished three-trial sim run, copied by each test that damages it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    from hpcps.tune.cli import main
    assert main([*base(out, "random", 3), "--quiet"]) == 0
    return out


def _set(*keys_and_value):
    """A damage: state[k1][k2]... = value."""
    def mutate(state):
        *keys, last, value = keys_and_value
        target = state
        for k in keys:
            target = target[k]
        target[last] = value
    return mutate


DAMAGED_STATES = {
    "not JSON": (lambda state: json.dumps(state)[:200], "is damaged: not JSON"),
    "a list": (lambda state: "[1, 2]", "is damaged: holds a list, not an object"),
    "no trials": (_set("trials", None), "'trials' is None, not a list"),
    "NaN time": (_set("trials", 0, "iteration_time_s", float("nan")), "trials[0].iteration_time_s is nan"),
    "negative time": (_set("trials", 1, "iteration_time_s", -1.0), "trials[1].iteration_time_s is -1.0"),
    "text time": (_set("trials", 0, "iteration_time_s", "fast"), "trials[0].iteration_time_s is 'fast'"),
    "trial twice": (lambda state: state["trials"].append(dict(state["trials"][0])), "trials[3].trial is 1, not 4"),
    "short point": (_set("trials", 0, "point", [1.0]), "trial 1's point has 1 values"),
    "point out of range": (_set("trials", 2, "point", 0, 1e300), "trial 3's point is not a schedule a trial ran"),
    "bad schedule": (_set("trials", 0, "schedule", {"nodes": "x"}), "trial 1's schedule: "),
    "escaping path": (_set("trials", 0, "observations_file", "../../etc/passwd"),
                      "is not a path inside the run's directory"),
    "observations gone": (None, "trial 1's observations cannot be read"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_STATES))
def test_resume_of_a_damaged_state_is_one_line_and_writes_nothing(finished_run, tmp_path, capsys, case):
    """The state file is --resume's input: damage is one line and exit status 2, and the run's directory
    is left as it was (these ended in tracebacks, or were taken and written back)."""
    import shutil
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    state_file = out / "state.json"
    damage, words = DAMAGED_STATES[case]
    if damage is None:
        (out / json.loads(state_file.read_text())["trials"][0]["observations_file"]).unlink()
    else:
        state = json.loads(state_file.read_text())
        text = damage(state)                     # the file's new text, or None: the state changed in place
        state_file.write_text(text if isinstance(text, str) else json.dumps(state))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    from hpcps.tune.cli import main
    rc = main([*base(out, "random", 5), "--resume", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("hpcps.tune: error: "), err
    assert words in err[0] and "start a new run in another --out" in err[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# -- codecs as a knob: the network-bound cluster, the 11M-parameter job ------------------------------

WIDE = str(ROOT / "jobs/cifar-wide.toml")
SLOWNET = str(ROOT / "jobs/clusters/slownet5.toml")


def simulated(cluster, job, schedule):
    sim = subprocess.run([sys.executable, "-m", "hpcps.sim", "--cluster", cluster, "--job", job, "--schedule",
                          str(schedule), "--json"], capture_output=True, text=True, cwd=ROOT, env=env(), timeout=120)
    assert sim.returncode == 0, sim.stderr
    return json.loads(sim.stdout)["iteration_time_s"]


def test_allowing_int8_finds_a_faster_schedule_where_the_network_dominates(tmp_path):
    """On 1 Gb/s NICs with 44 MB of parameters the best schedule found with none and int8 allowed is at
    least as fast (simulated, without noise) as the best with float32 pushes only, and gives int8 to a
    worker; without --codecs no trial names a codec."""
    best = {}
    for name, more in (("plain", ()), ("int8", ("--codecs", "none,int8"))):
        out = tmp_path / name
        r = tune("--job", WIDE, "--cluster", SLOWNET, "--backend", "sim", "--strategy", "structured", "--budget", "4",
                 "--out", str(out), "--iterations", "3", "--quiet", *more)
        assert r.returncode == 0, r.stderr
        best[name] = simulated(SLOWNET, WIDE, out / "best_schedule.toml")
        text = (out / "best_schedule.toml").read_text()
        schedules = [x["schedule"] for x in rows(out)]
        codecs = json.loads((out / "state.json").read_text())["settings"]["codecs"]
        if name == "plain":
            assert "codec" not in text and not any("/none" in x or "/int8" in x for x in schedules)
            assert codecs == "none"
        else:
            assert 'codec = "int8"' in text
            assert any("/int8" in x for x in schedules)
            assert codecs == "none,int8"
    assert best["int8"] <= best["plain"], best


def test_the_tuner_says_when_codecs_it_may_choose_have_no_calibrated_cost(tmp_path):
    """Codecs without a calibrated cost are free to the simulator and the structured model: the tuner
    says so (one line on stderr, naming them) before its trials, and says nothing when they are
    calibrated or when it may choose no lossy codec."""
    from hpcps.sim.profile import DEFAULT_PROFILES
    bare = tmp_path / "bare.toml"
    bare.write_text(DEFAULT_PROFILES.read_text().replace("codec_s_per_element", "# codec_s_per_element"))
    costed = tmp_path / "costed.toml"
    costed.write_text(bare.read_text().replace(
        "[machine]", '[machine]\ncodec_s_per_element = {"int8" = [1e-9, 1e-9], "sign" = [1e-9, 1e-9]}'))
    said = {}
    for name, profiles, codecs in (("bare", bare, "none,int8,sign"), ("costed", costed, "none,int8,sign"),
                                   ("plain", bare, "none")):
        r = tune(*base(tmp_path / name, "heuristic", 1, "--codecs", codecs, "--quiet"),
                 extra_env={"HPCPS_PROFILES": str(profiles)})
        assert r.returncode == 0, r.stderr
        said[name] = [line for line in r.stderr.splitlines() if "calibrated cost" in line]
    assert said["bare"] == ["hpcps.tune: note: the simulator's compute profile has no calibrated cost for codec "
                            "int8, sign: encoding and decoding counted as free (benchmarks/calibrate_compute.py "
                            "measures them on the machine speed 1.0 stands for)"]
    assert said["costed"] == [] and said["plain"] == []


def test_resume_with_another_codec_set_is_refused(tmp_path):
    out = tmp_path / "run"
    assert tune(*base(out, "random", 2, "--codecs", "none,int8")).returncode == 0
    before = (out / "state.json").read_text()
    for other in ((), ("--codecs", "none,fp16"), ("--codecs", "none")):
        r = tune(*base(out, "random", 3, *other), "--resume")
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "codecs = 'none,int8'" in lines[0], lines
        assert (out / "state.json").read_text() == before
    r = tune(*base(out, "random", 3, "--codecs", "int8,none"), "--resume")          # the same set
    assert r.returncode == 0, r.stderr
    assert [x["trial"] for x in rows(out)] == ["1", "2", "3"]


def test_a_run_recorded_before_codecs_were_tuned_resumes_without_codecs(tmp_path):
    out = tmp_path / "run"
    assert tune(*base(out, "random", 2)).returncode == 0
    state = json.loads((out / "state.json").read_text())
    assert state["settings"].pop("codecs") == "none"
    (out / "state.json").write_text(json.dumps(state))
    r = tune(*base(out, "random", 3, "--codecs", "none,int8"), "--resume")
    assert r.returncode == 2 and "codecs = 'none'" in r.stderr, r.stderr
    r = tune(*base(out, "random", 3), "--resume")
    assert r.returncode == 0, r.stderr


# -- the synchronisation as a knob: hetero8, where asp is about twice as fast as bsp -----------------

HETERO8_JOB = str(ROOT / "jobs/hetero8.toml")
HETERO8 = str(ROOT / "jobs/clusters/hetero8.toml")


def test_allowing_asp_finds_that_it_is_faster_and_says_so(tmp_path):
    """With --syncs bsp,asp on hetero8 (balanced: 12.2 ms a global batch under bsp, 6.4 under asp) the
    best trial runs under asp, which trials.csv, best_schedule.toml and the state's settings show; the
    best schedule under its sync is what the simulator says; without --syncs nothing names a sync."""
    out = tmp_path / "run"
    r = tune("--job", HETERO8_JOB, "--cluster", HETERO8, "--backend", "sim", "--strategy", "structured",
             "--budget", "4", "--out", str(out), "--iterations", "3", "--quiet", "--syncs", "bsp,asp")
    assert r.returncode == 0, r.stderr
    table = rows(out)
    best = table[-1]["best_trial"]
    assert [x["schedule"].rsplit("; sync=", 1)[1] for x in table][0] == "bsp"
    assert next(x for x in table if x["trial"] == best)["schedule"].endswith("; sync=asp")
    text = (out / "best_schedule.toml").read_text()
    assert text.startswith("# Run under sync = asp: python -m hpcps.train ... --sync asp")
    assert json.loads((out / "state.json").read_text())["settings"]["syncs"] == "bsp,asp"
    sim = subprocess.run([sys.executable, "-m", "hpcps.sim", "--cluster", HETERO8, "--job", HETERO8_JOB,
                          "--schedule", str(out / "best_schedule.toml"), "--sync", "asp", "--json"],
                         capture_output=True, text=True, cwd=ROOT, env=env(), timeout=120)
    assert sim.returncode == 0, sim.stderr
    assert json.loads(sim.stdout)["iteration_time_s"] < 0.6 * 12.17e-3

    plain = tmp_path / "plain"
    r = tune("--job", HETERO8_JOB, "--cluster", HETERO8, "--backend", "sim", "--strategy", "random",
             "--budget", "2", "--out", str(plain), "--iterations", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert not any("sync" in x["schedule"] for x in rows(plain))
    assert not (plain / "best_schedule.toml").read_text().startswith("#")
    assert json.loads((plain / "state.json").read_text())["settings"]["syncs"] == ""


def test_resume_with_another_sync_set_is_refused(tmp_path):
    out = tmp_path / "run"
    assert tune(*base(out, "random", 2, "--syncs", "bsp,asp")).returncode == 0
    before = (out / "state.json").read_text()
    for other in ((), ("--syncs", "bsp,ssp1"), ("--syncs", "bsp")):
        r = tune(*base(out, "random", 3, *other), "--resume")
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "syncs = 'bsp,asp'" in lines[0], lines
        assert (out / "state.json").read_text() == before
    r = tune(*base(out, "random", 3, "--syncs", "asp,bsp"), "--resume")          # the same set
    assert r.returncode == 0, r.stderr
    assert [x["trial"] for x in rows(out)] == ["1", "2", "3"]
