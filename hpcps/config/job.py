"""Jobs: what to train (workload, model and data options), how (optimiser), and for how long.

See docs/jobs.md for the format; jobs/*.toml are examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcps.config.errors import ConfigError
from hpcps.config.schedule import Schedule, parse_schedule
from hpcps.config.toml_schema import (REQUIRED, read_toml, require_choice, require_positive,
                                      take_table)

OPTIMIZERS = ("sgd", "adam", "adamw")
# bulk-synchronous, bounded staleness (training.staleness rounds), asynchronous: hpcps/ps/sync.py
SYNC_MODES = ("bsp", "ssp", "asp")

_TOP_SPEC = {
    "name": (str, REQUIRED),
    "workload": (str, REQUIRED),
    "model": (dict, {}),
    "data": (dict, {}),
    "optimizer": (dict, REQUIRED),
    "training": (dict, REQUIRED),
    "schedule": (dict, None),
    "cluster": (str, None),
    "exchange": (dict, {}),
}
_OPT_SPEC = {
    "name": (str, REQUIRED),
    "lr": (float, REQUIRED),
    "momentum": (float, 0.0),
    "nesterov": (bool, False),
    "weight_decay": (float, 0.0),
    "betas": (list, [0.9, 0.999]),
    "eps": (float, 1e-8),
}
_TRAIN_SPEC = {
    "global_batch": (int, REQUIRED),
    "iterations": (int, 0),
    "epochs": (float, 0.0),
    "seed": (int, 0),
    "log_every": (int, 10),
    "eval_every": (int, 0),
    "sync": (str, "bsp"),
    "staleness": (int, 0),
}
_EXCHANGE_SPEC = {
    "codec": (str, "none"),
    "bucket_mb": (float, 4.0),
    "overlap": (bool, True),
}
CODECS = ("none",)   # push codecs: hpcps.ps.codec.CODECS


@dataclass(frozen=True)
class OptimizerConfig:
    name: str
    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class TrainingConfig:
    global_batch: int
    iterations: int = 0      # 0: derive from epochs
    epochs: float = 0.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0      # 0: evaluate at the end only
    sync: str = "bsp"
    staleness: int = 0       # ssp: a worker at clock c may compute on any version >= c - staleness


@dataclass(frozen=True)
class ExchangeConfig:
    codec: str = "none"        # what a push becomes on the wire (hpcps/ps/codec.py)
    bucket_mb: float = 4.0     # the largest piece a shard is cut into: the unit of overlap
    overlap: bool = True       # push during backward, start the forward on the pieces that have arrived


@dataclass(frozen=True)
class Job:
    name: str
    workload: str
    optimizer: OptimizerConfig
    training: TrainingConfig
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    schedule: Schedule | None = None
    cluster: str | None = None
    source: str = "<job>"
    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)

    def with_iterations(self, iterations: int) -> "Job":
        from dataclasses import replace
        return replace(self, training=replace(self.training, iterations=iterations, epochs=0.0))


def parse_job(table: dict[str, Any], source: str) -> Job:
    top = take_table(source, "", table, _TOP_SPEC)
    opt = take_table(source, "optimizer", top["optimizer"], _OPT_SPEC)
    require_choice(source, "optimizer.name", opt["name"], OPTIMIZERS)
    require_positive(source, "optimizer.lr", opt["lr"])
    require_positive(source, "optimizer.momentum", opt["momentum"], allow_zero=True)
    require_positive(source, "optimizer.weight_decay", opt["weight_decay"], allow_zero=True)
    betas = opt["betas"]
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError(source, "optimizer.betas", f"must be two numbers in [0, 1), got {betas!r}")
    optimizer = OptimizerConfig(opt["name"], opt["lr"], opt["momentum"], opt["nesterov"], opt["weight_decay"],
                                (float(betas[0]), float(betas[1])), opt["eps"])

    tr = take_table(source, "training", top["training"], _TRAIN_SPEC)
    require_positive(source, "training.global_batch", tr["global_batch"])
    require_positive(source, "training.iterations", tr["iterations"], allow_zero=True)
    require_positive(source, "training.epochs", tr["epochs"], allow_zero=True)
    require_positive(source, "training.log_every", tr["log_every"])
    require_positive(source, "training.eval_every", tr["eval_every"], allow_zero=True)
    require_choice(source, "training.sync", tr["sync"], SYNC_MODES)
    require_positive(source, "training.staleness", tr["staleness"], allow_zero=True)
    if tr["staleness"] and tr["sync"] != "ssp":
        raise ConfigError(source, "training.staleness",
                          f"applies to sync = \"ssp\" only; got staleness = {tr['staleness']} with "
                          f"sync = \"{tr['sync']}\"")
    if (tr["iterations"] > 0) == (tr["epochs"] > 0):
        raise ConfigError(source, "training.iterations",
                          "give exactly one of training.iterations (> 0) or training.epochs (> 0)")
    training = TrainingConfig(**tr)

    from hpcps.workloads import validate_options  # no torch import: option specs are plain data
    model, data = validate_options(top["workload"], top["model"], top["data"], source)

    ex = take_table(source, "exchange", top["exchange"], _EXCHANGE_SPEC)
    require_choice(source, "exchange.codec", ex["codec"], CODECS)
    if not 1 / 1024 <= ex["bucket_mb"] <= 1024:
        raise ConfigError(source, "exchange.bucket_mb", f"must be in [1/1024, 1024] (MiB), got {ex['bucket_mb']!r}")
    exchange = ExchangeConfig(**ex)

    schedule = None
    if top["schedule"] is not None:
        schedule = parse_schedule(top["schedule"], source, prefix="schedule")
    return Job(top["name"], top["workload"], optimizer, training, model, data, schedule, top["cluster"], source,
               exchange)


def load_job(path: str | Path) -> Job:
    return parse_job(read_toml(path), str(path))
