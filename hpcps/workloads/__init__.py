"""Workloads: a model, its data and its loss. Built-ins are named; others are 'package.module:factory'.

A factory is called as factory(model_options: dict, data_options: dict, seed: int) and returns an
object with the methods of hpcps.workloads.base.Workload.
"""

from __future__ import annotations

import importlib
from typing import Any

from hpcps.config import limits
from hpcps.config.errors import ConfigError
from hpcps.config.toml_schema import take_table
from hpcps.workloads.specs import DATA_SPECS, MODEL_SPECS, model_parameters, train_samples

BUILTIN = {
    "digits": "hpcps.workloads.digits:DigitsWorkload",
    "cifar-resnet": "hpcps.workloads.cifar:CifarResNetWorkload",
    "charlm": "hpcps.workloads.charlm:CharLMWorkload",
}


def validate_options(workload: str, model: dict, data: dict, source: str) -> tuple[dict, dict]:
    """Check a job's workload name and its [model]/[data] options; return them with defaults filled in."""
    if workload in BUILTIN:
        model = take_table(source, "model", model, MODEL_SPECS[workload])
        data = take_table(source, "data", data, DATA_SPECS[workload])
        if workload == "cifar-resnet" and not (model["width"] in (1, 2, 4) or model["width"] % 8 == 0):
            # Its GroupNorms split channels (width, 2 x width, 4 x width) into min(8, channels) groups.
            raise ConfigError(source, "model.width", f"must be 1, 2, 4 or a multiple of 8 (the GroupNorm layers "
                                                     f"split channels into groups of 8), got {model['width']}")
        n = model_parameters(workload, model, data)
        if n > limits.MAX_MODEL_PARAMS:
            raise ConfigError(source, "model", f"options {model} give a {workload} model of {n} parameters; "
                                               f"at most {limits.MAX_MODEL_PARAMS} (4 GB a copy)")
        return model, data
    if ":" not in workload:
        raise ConfigError(source, "workload",
                          f"unknown workload {workload!r}; built-ins are {', '.join(BUILTIN)}, "
                          "or give 'package.module:factory'")
    return dict(model), dict(data)  # a custom factory checks its own options


def load_factory(workload: str, source: str = "<job>"):
    """The factory of a workload name (a built-in, or 'package.module:factory'); ConfigError naming the
    job file when it cannot be imported."""
    target = BUILTIN.get(workload, workload)
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as e:  # noqa: BLE001 - whatever importing the user's module raises is bad input
        raise ConfigError(source, "workload", f"cannot load {target!r}: {type(e).__name__}: {e}") from None
    if not callable(factory):
        raise ConfigError(source, "workload", f"{target!r} is not callable")
    return factory


def check_data_size(job) -> None:
    """ConfigError unless a built-in workload's training set holds at least one global batch."""
    n = train_samples(job.workload, job.model, job.data)
    if n is None or job.training.global_batch <= n:
        return
    if n == 0:
        raise ConfigError(job.source, "data", f"workload {job.workload} has no training sample with these "
                                              f"options ({job.data}); give it more data")
    raise ConfigError(job.source, "training.global_batch",
                      f"must be <= {n}, the training samples of workload {job.workload} with these options; "
                      f"got {job.training.global_batch}")


def build_workload(workload: str, model: dict[str, Any], data: dict[str, Any], seed: int, source: str = "<job>"):
    return load_factory(workload, source)(model, data, seed)


__all__ = ["BUILTIN", "build_workload", "check_data_size", "load_factory", "train_samples", "validate_options"]
