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
    (with_(training__sync="ssp", training__staleness=1.5), "training.staleness", "must be an integer"),
    (with_(training__sync="ssp", training__staleness=True), "training.staleness", "must be an integer"),
    (with_(training__staleness=2), "training.staleness", 'applies to sync = "ssp" only'),
    (with_(training__sync="asp", training__staleness=1), "training.staleness", 'sync = "asp"'),
    (with_(workload="mnist"), "workload", "built-ins are digits"),
    (with_(model={"depth": 3}), "model.depth", "Valid keys are: hidden (default 128)"),
    (with_(data={"test_fraction": 1.5}), "data.test_fraction", "(0, 1)"),
    (with_(optimizer__betas=[0.9]), "optimizer.betas", "two numbers"),
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


@pytest.mark.parametrize("sync, staleness", [("bsp", 0), ("ssp", 0), ("ssp", 3), ("asp", 0)])
def test_sync_modes_and_staleness(sync, staleness):
    job = parse_job(with_(training__sync=sync, training__staleness=staleness), "j.toml")
    assert (job.training.sync, job.training.staleness) == (sync, staleness)
