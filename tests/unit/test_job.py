from pathlib import Path

import pytest

from hpcps.config import ConfigError, load_job
from hpcps.config.job import parse_job

ROOT = Path(__file__).resolve().parents[2]

GOOD = {"name": "t", "workload": "digits", "optimizer": {"name": "sgd", "lr": 0.1},
        "training": {"global_batch": 32, "iterations": 5}}


def with_(**changes):
    job = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    for dotted, value in changes.items():
        table, _, key = dotted.partition("__")
        if key:
            job.setdefault(table, {})[key] = value
        else:
            job[table] = value
    return job


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.toml")), ids=lambda p: p.name)
def test_bundled_jobs_load(path):
    job = load_job(path)
    assert job.training.global_batch > 0


def test_defaults_are_filled_in():
    job = parse_job(GOOD, "j.toml")
    assert job.optimizer.momentum == 0.0 and job.training.seed == 0 and job.model == {"hidden": 128}


@pytest.mark.parametrize("job, key, words", [
    (with_(colour="red"), "colour", "Valid keys are: name (required)"),
    (with_(optimizer__name="lbfgs"), "optimizer.name", "sgd, adam, adamw"),
    (with_(optimizer__lr="fast"), "optimizer.lr", "must be a number"),
    (with_(optimizer__lr=0), "optimizer.lr", "> 0"),
    (with_(training__global_batch=0), "training.global_batch", "> 0"),
    (with_(training__global_batch=3.5), "training.global_batch", "integer"),
    (with_(training__epochs=2.0), "training.iterations", "exactly one"),
    (with_(training__sync="async"), "training.sync", "bsp, ssp, asp"),
    (with_(training__sync="ssp", training__staleness=-1), "training.staleness", ">= 0"),
    (with_(training__sync="ssp", training__staleness=10**6), "training.staleness", "<= 1000"),
    (with_(training__sync="ssp", training__staleness=1.5), "training.staleness", "must be an integer"),
    (with_(training__sync="ssp", training__staleness=True), "training.staleness", "must be an integer"),
    (with_(training__staleness=2), "training.staleness", 'applies to sync = "ssp" only'),
    (with_(training__sync="asp", training__staleness=1), "training.staleness", 'sync = "asp"'),
    (with_(workload="mnist"), "workload", "built-ins are digits"),
    (with_(model={"depth": 3}), "model.depth", "Valid keys are: hidden (default 128)"),
    (with_(data={"test_fraction": 1.5}), "data.test_fraction", "> 0 and < 1"),
    (with_(optimizer__betas=[0.9]), "optimizer.betas", "two numbers"),
    (with_(exchange={"codec": "fp8"}), "exchange.codec", "must be one of none, fp16, bf16, int8, sign"),
    ({k: v for k, v in GOOD.items() if k != "optimizer"}, "optimizer", "required"),
])
def test_bad_jobs_name_the_key(job, key, words):
    with pytest.raises(ConfigError) as e:
        parse_job(job, "j.toml")
    assert e.value.key == key, str(e.value)
    assert "j.toml" in str(e.value) and words in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_job(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(bad)


def test_embedded_schedule_is_validated():
    job = with_(schedule={"servers": [0], "workers": [{"rank": 0, "batch": 0}]})
    with pytest.raises(ConfigError) as e:
        parse_job(job, "j.toml")
    assert e.value.key == "schedule.workers[0].batch"


@pytest.mark.parametrize("job, key, words", [
    # Non-finite numbers: TOML has nan and inf, and they used to pass (a run of NaN losses, or a hang).
    (with_(optimizer__lr=float("nan")), "optimizer.lr", "finite"),
    (with_(optimizer__lr=float("inf")), "optimizer.lr", "finite"),
    (with_(optimizer__momentum=float("nan")), "optimizer.momentum", "finite"),
    (with_(optimizer__eps=float("-inf")), "optimizer.eps", "finite"),
    (with_(optimizer__betas=[0.9, float("nan")]), "optimizer.betas", "two numbers in [0, 1)"),
    (with_(training__epochs=float("inf"), training__iterations=0), "training.epochs", "finite"),
    # Values that crashed the run with a traceback: float32 overflow, NumPy's seed, nesterov in torch.
    (with_(optimizer__lr=1e308), "optimizer.lr", "<= 10000"),
    (with_(training__seed=-1), "training.seed", ">= 0 and <= 4294967295"),
    (with_(training__seed=2**40), "training.seed", "<= 4294967295"),
    (with_(optimizer__momentum=1.5), "optimizer.momentum", ">= 0 and < 1"),
    (with_(optimizer__nesterov=True), "optimizer.nesterov", "needs optimizer.momentum > 0"),
    (with_(training__global_batch=10**9), "training.global_batch", "<= 10000000"),
    (with_(training__iterations=10**12), "training.iterations", "<= 1000000000"),
    (with_(model={"hidden": 10**8}), "model.hidden", "<= 65536"),
])
def test_numbers_out_of_range_are_bad_input(job, key, words):
    with pytest.raises(ConfigError) as e:
        parse_job(job, "j.toml")
    assert e.value.key == key, str(e.value)
    assert str(e.value).startswith("j.toml: ") and words in str(e.value)


def test_nan_and_inf_in_a_job_file(tmp_path):
    path = tmp_path / "j.toml"
    path.write_text('name = "t"\nworkload = "digits"\n[optimizer]\nname = "sgd"\nlr = nan\n'
                    '[training]\nglobal_batch = 8\niterations = 2\n')
    with pytest.raises(ConfigError, match=r"key 'optimizer.lr': must be a finite number > 0 and <= 10000, got nan"):
        load_job(path)


def test_a_directory_is_not_reported_as_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a TOML file"):
        load_job(tmp_path)


def test_the_dataclasses_are_the_one_source_of_defaults():
    from dataclasses import fields

    from hpcps.config.job import OptimizerConfig, TrainingConfig
    job = parse_job(GOOD, "j.toml")
    for cls, loaded in ((OptimizerConfig, job.optimizer), (TrainingConfig, job.training)):
        for f in fields(cls):
            if f.name not in GOOD["optimizer"] and f.name not in GOOD["training"]:
                assert getattr(loaded, f.name) == f.default, f.name


def test_the_cluster_key_is_found_beside_the_job_file(tmp_path, monkeypatch):
    (tmp_path / "jobs" / "clusters").mkdir(parents=True)
    (tmp_path / "jobs" / "clusters" / "c.toml").write_text("")
    job = parse_job(with_(cluster="clusters/c.toml"), str(tmp_path / "jobs" / "j.toml"))
    monkeypatch.chdir(tmp_path)
    assert job.cluster_path() == tmp_path / "jobs" / "clusters" / "c.toml"
    gone = parse_job(with_(cluster="clusters/none.toml"), str(tmp_path / "jobs" / "j.toml"))
    with pytest.raises(ConfigError) as e:
        gone.cluster_path()
    assert e.value.key == "cluster" and "'clusters/none.toml' not found" in str(e.value)


@pytest.mark.parametrize("codec", ["none", "fp16", "bf16", "int8", "sign"])
def test_push_codecs(codec):
    assert parse_job(with_(exchange={"codec": codec}), "j.toml").exchange.codec == codec
    assert parse_job(GOOD, "j.toml").exchange.codec == "none"

@pytest.mark.parametrize("sync, staleness", [("bsp", 0), ("ssp", 0), ("ssp", 3), ("asp", 0)])
def test_sync_modes_and_staleness(sync, staleness):
    job = parse_job(with_(training__sync=sync, training__staleness=staleness), "j.toml")
    assert (job.training.sync, job.training.staleness) == (sync, staleness)


@pytest.mark.parametrize("name, pair", [("bsp", ("bsp", 0)), ("asp", ("asp", 0)), ("ssp1", ("ssp", 1)),
                                        ("ssp12", ("ssp", 12))])
def test_sync_names_round_trip(name, pair):
    from hpcps.config.job import parse_sync_name, sync_name
    assert parse_sync_name(name) == pair
    assert sync_name(*pair) == name
    job = parse_job(GOOD, "j.toml").with_sync(*pair)
    assert (job.training.sync, job.training.staleness) == pair and job.sync_name == name


@pytest.mark.parametrize("name", ["ssp", "ssp0", "ssp-1", "sspx", "ssp1.5", "BSP", "ssp１", "ssp1001", ""])
def test_bad_sync_names_say_what_is_allowed(name):
    from hpcps.config.job import parse_sync_name
    with pytest.raises(ValueError, match=r"unknown synchronisation .*; allowed: bsp, asp, or sspN with N an integer "
                                         r"from 1 to 1000"):
        parse_sync_name(name)
    assert parse_sync_name("ssp0", allow_ssp0=True) == ("ssp", 0)


def test_train_sync_overrides_the_jobs_synchronisation():
    """hpcps.train --sync (what a tuner's trial under another synchronisation runs with)."""
    from hpcps.train import build_parser, resolve_inputs
    job = ROOT / "jobs/cifar.toml"
    for flag, pair in (("asp", ("asp", 0)), ("ssp3", ("ssp", 3)), ("bsp", ("bsp", 0))):
        launch = resolve_inputs(build_parser().parse_args(["--job", str(job), "--sync", flag]), 4)
        assert (launch.job.training.sync, launch.job.training.staleness) == pair
    with pytest.raises(ConfigError, match=r"--sync: unknown synchronisation 'ssp'"):
        resolve_inputs(build_parser().parse_args(["--job", str(job), "--sync", "ssp"]), 4)
