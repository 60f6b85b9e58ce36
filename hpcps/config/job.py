"""Jobs: what to train (workload, model and data options), how (optimiser), and for how long.

See docs/jobs.md for the format; jobs/*.toml are examples. The dataclasses below are the format: each
field is a key, with its default and its allowed range (hpcps.config.toml_schema.option).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpcps.config import limits
from hpcps.config.errors import ConfigError
from hpcps.config.schedule import CODECS, PULL_CODECS, Schedule, parse_schedule
from hpcps.config.toml_schema import option, read_toml, spec_of, take_table

OPTIMIZERS = ("sgd", "adam", "adamw")
# bulk-synchronous, bounded staleness (training.staleness rounds), asynchronous: hpcps/ps/sync.py
SYNC_MODES = ("bsp", "ssp", "asp")


def sync_name(sync: str, staleness: int) -> str:
    """One name for a synchronisation and its staleness: bsp, asp, or sspN (N = staleness)."""
    return f"ssp{staleness}" if sync == "ssp" else sync


def parse_sync_name(text: str, allow_ssp0: bool = False) -> tuple[str, int]:
    """(training.sync, training.staleness) of a name sync_name() gives: bsp, asp, or sspN with N an
    integer from 1 to limits.MAX_STALENESS (ssp0 only where allow_ssp0: it runs bsp's timeline, so a
    choice among modes names it bsp). Raises ValueError saying what is allowed."""
    allowed = f"bsp, asp, or sspN with N an integer from 1 to {limits.MAX_STALENESS} (e.g. ssp2)"
    name = text.strip()
    if name in ("bsp", "asp"):
        return name, 0
    digits = name[3:]
    if name.startswith("ssp") and digits.isdigit() and digits.isascii():
        n = int(digits)
        if (1 if not allow_ssp0 else 0) <= n <= limits.MAX_STALENESS:
            return "ssp", n
    hint = " (ssp needs its staleness: ssp1, ssp2, ...)" if name == "ssp" else ""
    raise ValueError(f"unknown synchronisation {text!r}{hint}; allowed: {allowed}")


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = option(choices=OPTIMIZERS)
    lr: float = option(gt=0, le=limits.MAX_LR)
    momentum: float = option(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = option(0.0, ge=0, le=limits.MAX_WEIGHT_DECAY)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = option(1e-8, ge=0, le=limits.MAX_EPS)


@dataclass(frozen=True)
class TrainingConfig:
    global_batch: int = option(gt=0, le=limits.MAX_BATCH)
    iterations: int = option(0, ge=0, le=limits.MAX_ITERATIONS)     # 0: derive from epochs
    epochs: float = option(0.0, ge=0, le=limits.MAX_EPOCHS)
    seed: int = option(0, ge=0, le=limits.MAX_SEED)
    log_every: int = option(10, gt=0, le=limits.MAX_LOG_EVERY)
    eval_every: int = option(0, ge=0, le=limits.MAX_LOG_EVERY)      # 0: evaluate at the end only
    sync: str = option("bsp", choices=SYNC_MODES)
    # With --checkpoint: every N iterations (0: only at the end and on signals), and every this many
    # seconds (0: never by time); docs/checkpoints.md.
    checkpoint_every: int = option(0, ge=0, le=limits.MAX_ITERATIONS)
    checkpoint_every_s: float = option(600.0, ge=0, le=limits.MAX_CHECKPOINT_EVERY_S)
    # ssp: a worker at clock c may compute on any version >= c - staleness (checked in parse_job)
    staleness: int = option(0, ge=0, le=limits.MAX_STALENESS)


@dataclass(frozen=True)
class ExchangeConfig:
    codec: str = option("none", choices=CODECS)   # what a push becomes on the wire (hpcps/ps/codec.py)
    pull_codec: str = option("none", choices=PULL_CODECS)   # what a pull becomes on the wire (the same file)
    bucket_mb: float = 4.0     # the largest piece a shard is cut into: the unit of overlap (checked in parse_job)
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
        return replace(self, training=replace(self.training, iterations=iterations, epochs=0.0))

    def with_sync(self, sync: str, staleness: int) -> "Job":
        """The job under another synchronisation (staleness 0 unless sync is ssp)."""
        return replace(self, training=replace(self.training, sync=sync, staleness=staleness if sync == "ssp" else 0))

    @property
    def sync_name(self) -> str:
        """training.sync and staleness as one name: bsp, asp, sspN."""
        return sync_name(self.training.sync, self.training.staleness)

    def cluster_path(self) -> Path | None:
        """The file the cluster key names: as given when it exists (relative to the working directory),
        else beside the job file. ConfigError when neither exists; None without a cluster key."""
        if not self.cluster:
            return None
        given = Path(self.cluster)
        if given.is_absolute() or given.exists():
            return given
        beside = Path(self.source).parent / given
        if beside.exists():
            return beside
        raise ConfigError(self.source, "cluster", f"file {self.cluster!r} not found (looked in the working "
                                                  f"directory and in {Path(self.source).parent or '.'})")


_TOP_SPEC = spec_of(Job, exclude=("source",))
_OPT_SPEC = spec_of(OptimizerConfig)
_TRAIN_SPEC = spec_of(TrainingConfig)
_EXCHANGE_SPEC = spec_of(ExchangeConfig)


def parse_job(table: dict[str, Any], source: str) -> Job:
    top = take_table(source, "", table, _TOP_SPEC)
    opt = take_table(source, "optimizer", top["optimizer"], _OPT_SPEC)
    betas = opt["betas"]
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                  for b in betas):
        raise ConfigError(source, "optimizer.betas", f"must be two numbers in [0, 1), got {betas!r}")
    if opt["nesterov"] and opt["momentum"] == 0:
        raise ConfigError(source, "optimizer.nesterov", "needs optimizer.momentum > 0")
    optimizer = OptimizerConfig(**{**opt, "betas": (float(betas[0]), float(betas[1]))})

    tr = take_table(source, "training", top["training"], _TRAIN_SPEC)
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
