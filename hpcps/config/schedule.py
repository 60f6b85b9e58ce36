"""Schedules: which ranks are parameter servers, which are workers, and each worker's batch and threads.

A schedule file (or the [schedule] table of a job) looks like::

    servers = [0, 1]          # ranks that hold a shard of the parameters
    [[workers]]
    rank = 0                  # a rank may be both a server and a worker
    batch = 5                 # this worker's share of the global batch (samples per step)
    threads = 1               # intra-op threads PyTorch uses on this worker
    codec = "int8"            # optional: this worker's push codec (default: the job's [exchange] codec)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcps.config import limits
from hpcps.config.errors import ConfigError
from hpcps.config.toml_schema import option, read_toml, spec_of, take_table
from hpcps.config.toml_writer import dumps

# Push codecs (hpcps.ps.codec.CODECS; kept here as names so reading a config imports no NumPy).
CODECS = ("none", "fp16", "bf16", "int8", "sign", "topk")
# Pull codecs (hpcps.ps.codec.PULL_CODECS): what a server's values become on their way to the workers.
PULL_CODECS = ("none", "fp16", "bf16")


@dataclass(frozen=True)
class WorkerSpec:
    rank: int = option(ge=0, lt=limits.MAX_RANKS)
    batch: int = option(gt=0, le=limits.MAX_BATCH)
    threads: int = option(1, gt=0, le=limits.MAX_THREADS)
    codec: str | None = option(None, choices=CODECS)   # None: the job's [exchange] codec


@dataclass(frozen=True)
class Schedule:
    servers: tuple[int, ...]
    workers: tuple[WorkerSpec, ...]
    source: str = "<schedule>"

    @property
    def global_batch(self) -> int:
        return sum(w.batch for w in self.workers)

    @property
    def n_ranks_needed(self) -> int:
        return 1 + max(max(self.servers), max(w.rank for w in self.workers))

    def worker(self, rank: int) -> WorkerSpec | None:
        for w in self.workers:
            if w.rank == rank:
                return w
        return None

    def is_server(self, rank: int) -> bool:
        return rank in self.servers

    def check_against(self, n_ranks: int, global_batch: int) -> None:
        """Raise ConfigError if this schedule cannot run on n_ranks ranks for a job of global_batch."""
        for i, s in enumerate(self.servers):
            if s >= n_ranks:
                raise ConfigError(self.source, f"servers[{i}]",
                                  f"names rank {s} but only {n_ranks} ranks were launched (valid ranks: 0..{n_ranks - 1})")
        for i, w in enumerate(self.workers):
            if w.rank >= n_ranks:
                raise ConfigError(self.source, f"workers[{i}].rank",
                                  f"names rank {w.rank} but only {n_ranks} ranks were launched (valid ranks: 0..{n_ranks - 1})")
        if self.global_batch != global_batch:
            raise ConfigError(self.source, "workers.batch",
                              f"worker batches sum to {self.global_batch} but the job's training.global_batch is "
                              f"{global_batch}; they must be equal")

    def to_toml(self) -> str:
        return dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"servers": list(self.servers),
                "workers": [{"rank": w.rank, "batch": w.batch, "threads": w.threads,
                             **({"codec": w.codec} if w.codec is not None else {})} for w in self.workers]}


_TOP_SPEC = spec_of(Schedule, exclude=("source",))
_WORKER_SPEC = spec_of(WorkerSpec)


def parse_schedule(table: dict[str, Any], source: str, prefix: str = "") -> Schedule:
    """Validate a schedule table (the whole file, or a job's [schedule])."""
    def key(k: str) -> str:
        return f"{prefix}.{k}" if prefix else k

    top = take_table(source, prefix, table, _TOP_SPEC)
    servers = top["servers"]
    if not servers:
        raise ConfigError(source, key("servers"), "no parameter server: list at least one rank, e.g. servers = [0]")
    for i, s in enumerate(servers):
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < limits.MAX_RANKS:
            raise ConfigError(source, key(f"servers[{i}]"),
                              f"must be a rank number >= 0 and < {limits.MAX_RANKS}, got {s!r}")
    if len(set(servers)) != len(servers):
        raise ConfigError(source, key("servers"), f"lists a rank twice: {servers}")
    if not top["workers"]:
        raise ConfigError(source, key("workers"), "no worker: add at least one [[workers]] table with rank and batch")
    workers = []
    for i, w in enumerate(top["workers"]):
        workers.append(WorkerSpec(**take_table(source, key(f"workers[{i}]"), w, _WORKER_SPEC)))
    ranks = [w.rank for w in workers]
    if len(set(ranks)) != len(ranks):
        raise ConfigError(source, key("workers"), f"a rank appears in two [[workers]] tables: {ranks}")
    total = sum(w.batch for w in workers)
    if total > limits.MAX_BATCH:
        raise ConfigError(source, key("workers.batch"),
                          f"worker batches sum to {total}; a global batch must be <= {limits.MAX_BATCH}")
    return Schedule(tuple(servers), tuple(sorted(workers, key=lambda w: w.rank)), source)


def load_schedule(path: str | Path) -> Schedule:
    return parse_schedule(read_toml(path), str(path))


def split_evenly(total: int, parts: int) -> list[int]:
    """total split into parts integers that differ by at most one, larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def default_schedule(n_ranks: int, global_batch: int, threads: int = 1) -> Schedule:
    """Every rank a worker with an equal share of the batch; one server per four ranks, colocated.

    Colocating the servers keeps every rank computing, and a server per four workers keeps one
    server's NIC from carrying every push on larger runs.
    """
    if n_ranks < 1:
        raise ValueError(f"n_ranks must be >= 1, got {n_ranks}")
    n_workers = min(n_ranks, global_batch)
    n_servers = max(1, n_ranks // 4)
    batches = split_evenly(global_batch, n_workers)
    workers = tuple(WorkerSpec(r, b, threads) for r, b in enumerate(batches))
    return Schedule(tuple(range(n_servers)), workers, f"<default schedule for {n_ranks} ranks>")
