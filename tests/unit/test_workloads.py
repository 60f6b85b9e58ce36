"""The workload option specs (plain data) against the workloads themselves (PyTorch)."""

import pytest

from hpcps.config import ConfigError
from hpcps.config.job import parse_job
from hpcps.workloads import build_workload, check_data_size, load_factory
from hpcps.workloads.specs import OPTIONS, model_parameters, train_samples, with_defaults


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


@pytest.mark.parametrize("workload, model, data", [
    ("digits", {}, {}),
    ("digits", {"hidden": 7}, {}),
    ("cifar-resnet", {}, {"samples": 8, "test_samples": 8}),
    ("cifar-resnet", {"width": 2, "blocks": 3}, {"samples": 8, "test_samples": 8}),
    ("cifar-resnet", {"width": 24, "blocks": 2}, {"samples": 8, "test_samples": 8}),
    ("charlm", {}, {"corpus_chars": 3000}),
    ("charlm", {"embed": 5, "hidden": 9, "layers": 3}, {"corpus_chars": 500}),
])
def test_parameters_counted_from_the_architecture_match_the_model(workload, model, data):
    built = build_workload(workload, model, data, seed=0).build_model()
    assert model_parameters(workload, model, data) == sum(p.numel() for p in built.parameters() if p.requires_grad)


def test_a_model_too_large_to_hold_is_bad_input():
    job = {"name": "t", "workload": "charlm", "model": {"hidden": 65536, "layers": 4},
           "optimizer": {"name": "sgd", "lr": 0.1}, "training": {"global_batch": 8, "iterations": 2}}
    with pytest.raises(ConfigError, match=r"key 'model': options .* give a charlm model of \d+ parameters; at most"):
        parse_job(job, "j.toml")


@pytest.mark.parametrize("width, ok", [(1, True), (2, True), (3, False), (4, True), (8, True), (10, False), (24, True)])
def test_cifar_widths_the_model_can_build(width, ok):
    job = {"name": "t", "workload": "cifar-resnet", "model": {"width": width},
           "optimizer": {"name": "sgd", "lr": 0.1}, "training": {"global_batch": 8, "iterations": 2}}
    if ok:
        parse_job(job, "j.toml")
        build_workload("cifar-resnet", {"width": width}, {"samples": 4, "test_samples": 4}, seed=0).build_model()
    else:
        with pytest.raises(ConfigError, match="key 'model.width': must be 1, 2, 4 or a multiple of 8"):
            parse_job(job, "j.toml")
