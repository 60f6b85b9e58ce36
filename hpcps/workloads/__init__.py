"""Workloads: a model, its data and its loss. Built-ins are named; others are 'package.module:factory'.

A factory is called as factory(model_options: dict, data_options: dict, seed: int) and returns an
object with the methods of hpcps.workloads.base.Workload.
"""

from __future__ import annotations

import importlib
from typing import Any

from hpcps.config.errors import ConfigError
from hpcps.config.toml_schema import take_table
from hpcps.workloads.specs import DATA_SPECS, MODEL_SPECS

BUILTIN = {
    "digits": "hpcps.workloads.digits:DigitsWorkload",
    "cifar-resnet": "hpcps.workloads.cifar:CifarResNetWorkload",
    "charlm": "hpcps.workloads.charlm:CharLMWorkload",
}


def validate_options(workload: str, model: dict, data: dict, source: str) -> tuple[dict, dict]:
    """Check a job's workload name and its [model]/[data] options; return them with defaults filled in."""
    if workload in BUILTIN:
        m = take_table(source, "model", model, MODEL_SPECS[workload])
        d = take_table(source, "data", data, DATA_SPECS[workload])
        for table, values in (("model", m), ("data", d)):
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:
                    raise ConfigError(source, f"{table}.{k}", f"must be > 0, got {v!r}")
        if d.get("test_fraction") is not None and not 0 < d["test_fraction"] < 1:
            raise ConfigError(source, "data.test_fraction", f"must be in (0, 1), got {d['test_fraction']!r}")
        return m, d
    if ":" not in workload:
        raise ConfigError(source, "workload",
                          f"unknown workload {workload!r}; built-ins are {', '.join(BUILTIN)}, "
                          "or give 'package.module:factory'")
    return dict(model), dict(data)  # a custom factory checks its own options


def build_workload(workload: str, model: dict[str, Any], data: dict[str, Any], seed: int, source: str = "<job>"):
    target = BUILTIN.get(workload, workload)
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(source, "workload", f"cannot load {target!r}: {e}") from None
    return factory(model, data, seed)
