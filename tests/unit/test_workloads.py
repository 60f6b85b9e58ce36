"""The workload option specs (plain data) against the workloads themselves (PyTorch)."""

import pytest

from hpcps.config import ConfigError
from hpcps.config.job import parse_job
from hpcps.workloads import build_workload, check_data_size, load_factory
from hpcps.workloads.specs import OPTIONS, train_samples, with_defaults


@pytest.mark.parametrize("workload, model, data", [
    ("digits", {}, {}),
    ("digits", {}, {"test_fraction": 0.55}),
    ("cifar-resnet", {"width": 4}, {"samples": 100, "test_samples": 10}),
    ("charlm", {"hidden": 8}, {"corpus_chars": 5000, "seq_len": 33}),
    ("charlm", {}, {"corpus_chars": 50}),          # too short for one sample
])
def test_train_samples_agrees_with_the_workload(workload, model, data):
    assert build_workload(workload, model, data, seed=0).n_train() == train_samples(workload, model, data)


def test_workloads_use_the_spec_defaults():
    w = build_workload("charlm", {}, {"corpus_chars": 5000}, seed=0)
    model, data = with_defaults("charlm", {}, {})
    assert w.seq_len == data["seq_len"] and w.opts == model
    assert set(OPTIONS) == {"digits", "cifar-resnet", "charlm"}


def _job(**training):
    return parse_job({"name": "t", "workload": "digits", "optimizer": {"name": "sgd", "lr": 0.1},
                      "training": {"iterations": 2, **training}}, "j.toml")


def test_a_global_batch_over_the_training_set_is_bad_input():
    check_data_size(_job(global_batch=1438))
    with pytest.raises(ConfigError, match="key 'training.global_batch': must be <= 1438, the training samples"):
        check_data_size(_job(global_batch=1439))


def test_an_unloadable_custom_workload_names_the_job_and_key():
    with pytest.raises(ConfigError) as e:
        load_factory("no_such_module_here:factory", "j.toml")
    assert e.value.key == "workload" and str(e.value).startswith("j.toml: key 'workload': cannot load")
    with pytest.raises(ConfigError, match="cannot load"):
        load_factory(":factory", "j.toml")
