"""Checkpoint files: one HDF5 file per checkpoint, written atomically, verified when read.

A checkpoint holds the state of a run at an iteration boundary in a layout that does not depend on the
schedule that wrote it, so that a run can go on under another one (other ranks, other servers, other
batches): every array is a whole-vector array over the flat parameter vector, which the next run cuts
into its own pieces.

    /                     attrs: format, version, iteration, job_name, workload, identity (JSON: what a
                          resumed job must share), n_params, schedule (JSON), created, complete
    /params               float32 (n_params,)
    /optimizer/<key>      float32 (n_params,): the optimiser's per-element state (SGD's momentum_buffer,
                          Adam's exp_avg and exp_avg_sq); attrs of /optimizer: scalars (Adam's step)
    /residuals            float32 (n_workers, n_params): each worker's error-feedback residual (only when
                          a worker's codec keeps one); rows in the order of the schedule's workers
    /buffers/<i>          rank 0's model buffers (statistics that are not trained by the servers), attr name
    /rng/torch            uint8 (n_ranks, L): each rank's torch generator state

Written through a temporary file in the same directory, fsynced, then renamed (hpcps.io.outputs'
atomic_path), so a file with a checkpoint's name is always whole; every dataset carries HDF5's
fletcher32 checksum (checked on every read) and the root attribute `complete` is set last. The reader
skips a file that fails any check and takes the newest that passes. Only the newest KEEP checkpoints
are kept.

Pure file logic: no MPI here (hpcps/ps/checkpointer.py gathers the state of a running job).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcps.config.errors import ConfigError
from hpcps.io.outputs import atomic_path

FORMAT = "hpcps-checkpoint"
VERSION = 1
KEEP = 2                                   # checkpoints kept in a directory: the newest two
_NAME = re.compile(r"^ckpt-(\d{8,})\.h5$")
_TMP = re.compile(r"^\.ckpt-\d{8,}\.h5\..*\.tmp$")
_CHUNK_ELEMENTS = 1 << 20                  # 4 MiB of float32 per chunk: each checksummed on its own
SUPERSEDED = ".superseded"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: unreadable, incomplete, or of another job. One line."""

    def __init__(self, path: str | Path, message: str):
        super().__init__(str(path), None, message)


@dataclass
class Checkpoint:
    """The state of a run after `iteration` iterations. Arrays are whole-vector (see the module)."""
    iteration: int
    job_name: str
    identity: dict[str, Any]                # what a resumed job must share: identity_of(job)
    schedule: dict[str, Any]                # n_ranks, servers, workers [[rank, batch], ...], codecs
    params: np.ndarray                      # float32 (n,)
    optimizer_vectors: dict[str, np.ndarray] = field(default_factory=dict)   # float32 (n,)
    optimizer_scalars: dict[str, np.ndarray] = field(default_factory=dict)   # 0-d arrays, dtype kept
    residuals: np.ndarray | None = None     # float32 (n_workers, n)
    buffers: dict[str, np.ndarray] = field(default_factory=dict)
    rng_torch: np.ndarray | None = None     # uint8 (n_ranks, L)
    created: str = ""
    path: Path | None = None                # where it was read from

    @property
    def n_params(self) -> int:
        return int(self.params.shape[0])


def identity_of(job) -> dict[str, Any]:
    """What a job must share with the run that wrote a checkpoint to continue from it: the model (its
    workload and options: the parameter vector's layout), the data (options and seed: the train/test
    split and the sample order) and the optimiser (its state's meaning). Learning rate, batch, length
    and schedule may change."""
    return _canonical({"workload": job.workload, "model": job.model, "data": job.data,
                       "seed": job.training.seed, "optimizer": job.optimizer.name})


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def schedule_record(schedule, n_ranks: int, codecs: list[str], sync: str, staleness: int) -> dict[str, Any]:
    """How the run that writes a checkpoint ran. sync and staleness say what was; a checkpoint is taken
    where every clock is its iteration (docs/checkpoints.md), so any mode may continue from it."""
    return {"n_ranks": int(n_ranks), "servers": [int(s) for s in schedule.servers],
            "workers": [[int(w.rank), int(w.batch)] for w in schedule.workers], "codecs": list(codecs),
            "sync": sync, "staleness": int(staleness)}


def check_resumable(ckpt: Checkpoint, job, n_params: int | None = None,
                    buffers: dict[str, tuple[int, ...]] | None = None) -> None:
    """Raise CheckpointError unless job may continue from ckpt (n_params: the job's model size, if known;
    buffers: the shape of each of its model's buffers, if known: a model whose code changed can keep its
    parameter count and still hold other statistics, such as BatchNorm's where GroupNorm was)."""
    want = identity_of(job)
    for key in ("workload", "model", "data", "seed", "optimizer"):
        if ckpt.identity.get(key) != want[key]:
            raise CheckpointError(ckpt.path or "<checkpoint>",
                                  f"written by another job: its {key} is {_short(ckpt.identity.get(key))}, "
                                  f"this job's is {_short(want[key])} (job {ckpt.job_name!r})")
    if n_params is not None and n_params != ckpt.n_params:
        raise CheckpointError(ckpt.path or "<checkpoint>",
                              f"holds {ckpt.n_params} parameters, this job's model has {n_params}")
    if buffers is not None:
        saved = {name: tuple(np.shape(value)) for name, value in ckpt.buffers.items()}
        if saved != buffers:
            raise CheckpointError(ckpt.path or "<checkpoint>", "holds other model buffers than this job's "
                                  f"model: {_buffer_difference(saved, buffers)}")


def check_rng_states(ckpt: Checkpoint) -> None:
    """Raise CheckpointError unless each rank's generator state in ckpt is as long as this PyTorch's
    (torch.set_rng_state would refuse it on every rank once the run has started)."""
    if ckpt.rng_torch is None:
        return
    import torch
    want = torch.get_rng_state().numel()
    if ckpt.rng_torch.shape[1] != want:
        raise CheckpointError(ckpt.path or "<checkpoint>", f"its generator states are {ckpt.rng_torch.shape[1]} "
                                                           f"bytes long, this PyTorch's are {want}")


def _buffer_difference(saved: dict[str, tuple[int, ...]], model: dict[str, tuple[int, ...]]) -> str:
    """The first few names where a checkpoint's buffers and a model's differ, and how."""
    said = []
    for name in sorted(saved.keys() | model.keys()):
        if name not in model:
            said.append(f"{name} only in the checkpoint")
        elif name not in saved:
            said.append(f"{name} only in the model")
        elif saved[name] != model[name]:
            said.append(f"{name} has shape {list(saved[name])} there, {list(model[name])} here")
    return "; ".join(said[:3]) + (f"; and {len(said) - 3} more" if len(said) > 3 else "")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


# -- names and directories -------------------------------------------------------------------------------
def checkpoint_path(directory: str | Path, iteration: int) -> Path:
    return Path(directory) / f"ckpt-{iteration:08d}.h5"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of every file named like a checkpoint in directory, newest first (unverified)."""
    directory = Path(directory)
    found = []
    for entry in directory.iterdir() if directory.is_dir() else ():
        m = _NAME.match(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), entry))
    return sorted(found, reverse=True)


def latest_checkpoint(directory: str | Path) -> tuple[Checkpoint, list[tuple[Path, str]]]:
    """The newest checkpoint in directory that reads back whole, and the newer ones skipped with why.
    Raises CheckpointError when there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(directory, "no such directory" if not directory.exists() else "not a directory")
    skipped: list[tuple[Path, str]] = []
    for _, path in list_checkpoints(directory):
        try:
            return read_checkpoint(path), skipped
        except CheckpointError as e:
            skipped.append((path, e.message))
    why = "; ".join(f"{p.name}: {m}" for p, m in skipped)
    raise CheckpointError(directory, "no complete checkpoint (ckpt-NNNNNNNN.h5)" + (f": {why}" if why else ""))


def load_resume(path: str | Path) -> tuple[Checkpoint, list[tuple[Path, str]]]:
    """A checkpoint to resume from: path is a checkpoint file, or a directory (its newest good one)."""
    path = Path(path)
    if path.is_file():
        return read_checkpoint(path), []
    return latest_checkpoint(path)


# -- writing -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Written:
    path: Path
    bytes: int
    removed: tuple[Path, ...] = ()          # older checkpoints deleted (only the newest KEEP stay)
    set_aside: tuple[Path, ...] = ()        # newer ones from an abandoned run, renamed *.superseded


def write_checkpoint(directory: str | Path, ckpt: Checkpoint, keep: int = KEEP) -> Written:
    """Write ckpt as directory/ckpt-<iteration>.h5: a temporary file in the same directory, fsynced,
    renamed, the directory fsynced. Checkpoints of later iterations already there belong to a run that
    was abandoned (this one resumed from an earlier point): they are renamed *.superseded, so that a
    resume never picks them. Then only the newest keep checkpoints are kept, and temporary files a
    killed writer left are removed."""
    directory = Path(directory)
    final = checkpoint_path(directory, ckpt.iteration)
    set_aside = []
    with atomic_path(final, "--checkpoint") as tmp:       # the temporary file is fsynced, then renamed
        with h5py.File(tmp, "w", libver="latest") as f:
            _fill(f, ckpt)
            f.attrs["complete"] = 1            # last: a file without it was never finished
        for it, path in list_checkpoints(directory):
            if it > ckpt.iteration:
                aside = path.with_name(path.name + SUPERSEDED)
                os.replace(path, aside)
                set_aside.append(aside)
    _fsync(directory)                          # the rename itself survives a crash
    removed = []
    for _, path in list_checkpoints(directory)[keep:]:
        path.unlink(missing_ok=True)
        removed.append(path)
    for entry in directory.iterdir():
        if _TMP.match(entry.name):
            entry.unlink(missing_ok=True)
    return Written(final, final.stat().st_size, tuple(removed), tuple(set_aside))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dataset(group, key: str, data: np.ndarray, **attrs) -> None:
    # np.ascontiguousarray makes a 0-d array 1-d: a scalar buffer (BatchNorm's num_batches_tracked)
    # would come back as shape (1,) and be skipped on restore.
    data = np.ascontiguousarray(data) if np.ndim(data) else np.asarray(data)
    if data.ndim == 0 or data.size == 0:
        ds = group.create_dataset(key, data=data)
    else:
        chunks = (1,) * (data.ndim - 1) + (min(data.shape[-1], _CHUNK_ELEMENTS),)
        ds = group.create_dataset(key, data=data, chunks=chunks, fletcher32=True)
    for k, v in attrs.items():
        ds.attrs[k] = v


def _fill(f: h5py.File, ckpt: Checkpoint) -> None:
    n = ckpt.n_params
    f.attrs.update({"format": FORMAT, "version": VERSION, "iteration": int(ckpt.iteration),
                    "job_name": ckpt.job_name, "identity": json.dumps(ckpt.identity, sort_keys=True),
                    "n_params": n, "schedule": json.dumps(ckpt.schedule, sort_keys=True),
                    "created": ckpt.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    _dataset(f, "params", _vector(ckpt.params, n, "params"), units="parameter values",
             meaning="the flat parameter vector after `iteration` iterations (model order)")
    opt = f.create_group("optimizer")
    opt.attrs["meaning"] = "the optimiser's state over the flat vector; scalars are this group's attributes"
    for key, arr in sorted(ckpt.optimizer_vectors.items()):
        _dataset(opt, key, _vector(arr, n, f"optimizer/{key}"), meaning=f"optimiser state {key!r} per element")
    for key, value in sorted(ckpt.optimizer_scalars.items()):
        opt.attrs[key] = np.asarray(value)
    if ckpt.residuals is not None:
        res = np.asarray(ckpt.residuals, dtype=np.float32)
        if res.ndim != 2 or res.shape[1] != n:
            raise ValueError(f"residuals must be (n_workers, {n}), got {res.shape}")
        _dataset(f, "residuals", res, meaning="each worker's error-feedback residual, schedule order")
    buffers = f.create_group("buffers")
    for i, (name, arr) in enumerate(ckpt.buffers.items()):
        _dataset(buffers, str(i), np.asarray(arr), name=name)
    rng = f.create_group("rng")
    if ckpt.rng_torch is not None:
        _dataset(rng, "torch", np.asarray(ckpt.rng_torch, dtype=np.uint8),
                 meaning="each rank's torch.get_rng_state(), by rank")


def _vector(arr: np.ndarray, n: int, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.shape != (n,) or arr.dtype != np.float32:
        raise ValueError(f"{what} must be float32 ({n},), got {arr.dtype} {arr.shape}")
    return arr


# -- reading -------------------------------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint file. Raises CheckpointError (one line) if it is not a whole hpcps
    checkpoint: unreadable or truncated, without its `complete` mark, a dataset of the wrong size, or
    a checksum that does not match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    try:
        with h5py.File(path, "r") as f:
            return _read(f, path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py reports damage as OSError, KeyError, ValueError, RuntimeError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(path, f"unreadable ({first})") from None


def _read(f: h5py.File, path: Path) -> Checkpoint:
    a = f.attrs
    if a.get("format") != FORMAT:
        raise CheckpointError(path, "not an hpcps checkpoint (no format attribute)")
    if int(a.get("version", -1)) != VERSION:
        raise CheckpointError(path, f"checkpoint format version {a.get('version')}, this hpcps reads {VERSION}")
    if int(a.get("complete", 0)) != 1:
        raise CheckpointError(path, "incomplete: its writer never finished it")
    n = _count(path, a, "n_params")
    iteration = _count(path, a, "iteration")

    def vector(ds, name):
        if ds.shape != (n,) or ds.dtype != np.float32:
            raise CheckpointError(path, f"{name} is {ds.dtype} {ds.shape}, expected float32 ({n},)")
        return _finite(path, name, ds[...])

    params = vector(f["params"], "params")
    opt = f["optimizer"]
    vectors = {k: vector(opt[k], f"optimizer/{k}") for k in opt}
    scalars = {k: np.asarray(v) for k, v in opt.attrs.items() if k != "meaning"}
    identity = _json_object(path, a, "identity")
    schedule = _json_object(path, a, "schedule")
    _check_schedule_record(path, schedule)
    residuals = None
    if "residuals" in f:
        ds = f["residuals"]
        if ds.shape != (len(schedule["workers"]), n):
            raise CheckpointError(path, f"residuals are {ds.shape}, expected ({len(schedule['workers'])}, {n})")
        residuals = _finite(path, "residuals", ds[...])
    buffers = {}
    for i in sorted(f["buffers"], key=int):
        ds = f["buffers"][i]
        buffers[str(ds.attrs["name"])] = ds[...]
    rng = f["rng"]["torch"][...] if "torch" in f["rng"] else None
    if rng is not None and (rng.dtype != np.uint8 or rng.ndim != 2 or rng.shape[0] != schedule["n_ranks"]):
        raise CheckpointError(path, f"rng/torch is {rng.dtype} {rng.shape}, expected uint8 "
                                    f"({schedule['n_ranks']}, state length)")
    return Checkpoint(iteration, str(a["job_name"]), identity, schedule, params,
                      vectors, scalars, residuals, buffers, rng, str(a.get("created", "")), path)


# What a run writes is whole and finite (it stops on a non-finite loss or gradient before it writes):
# anything else is damage, refused here rather than resumed into a run that diverges at once and names
# this file its last good checkpoint.
def _count(path: Path, attrs, key: str) -> int:
    v = attrs.get(key)
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < 0:
        shown = v if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else repr(v)
        raise CheckpointError(path, f"its {key} is {shown}, not a count (an integer >= 0)")
    return int(v)


def _finite(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    bad = values.size - int(np.count_nonzero(np.isfinite(values)))
    if bad:
        raise CheckpointError(path, f"{name} hold {bad} values that are NaN or infinite: not a state to resume from")
    return values


def _json_object(path: Path, attrs, key: str) -> dict[str, Any]:
    try:
        value = json.loads(attrs[key])
    except (KeyError, TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise CheckpointError(path, f"its {key} attribute is not a JSON object")
    return value


def _check_schedule_record(path: Path, s: dict[str, Any]) -> None:
    """The layout schedule_record() wrote: n_ranks, servers, workers [[rank, batch], ...], codecs, sync."""
    def ints(v, n=None):
        return isinstance(v, list) and (n is None or len(v) == n) and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    ok = (ints([s.get("n_ranks")]) and s["n_ranks"] >= 1 and ints(s.get("servers"))
          and isinstance(s.get("workers"), list) and all(ints(w, 2) for w in s["workers"])
          and isinstance(s.get("codecs", []), list) and all(isinstance(c, str) for c in s.get("codecs", []))
          and isinstance(s.get("sync", ""), str) and ints([s.get("staleness", 0)]))
    if not ok:
        raise CheckpointError(path, f"its schedule attribute {_short(s)} is not a schedule record (n_ranks, servers, "
                                    "workers [[rank, batch], ...], codecs, sync, staleness)")


# -- residuals under another schedule ------------------------------------------------------------------------
def share_residuals(saved: np.ndarray, saved_batches: list[int], batches: list[int],
                    carries: np.ndarray, pieces) -> tuple[np.ndarray, int]:
    """Residuals for a new set of workers from those of the run that wrote the checkpoint.

    saved: (n_old, n) residual rows; saved_batches, batches: old and new workers' batches; carries:
    bool (n_new, n_pieces), whether new worker j's encoder of piece q keeps a residual; pieces: the new
    plan's pieces (start, stop). The servers apply the batch-weighted sum of the workers' pushes, so
    what the old workers still owed the parameters is r = sum_i (k_i / sum k) r_i. Every new worker
    that carries piece q gets r / W_q on it, W_q the summed weight of those workers: the new weighted
    sum is r again. Returns (rows (n_new, n) float32, elements of r dropped because no new worker
    carries their piece)."""
    saved = np.asarray(saved, dtype=np.float32)
    w_old = np.asarray(saved_batches, dtype=np.float64) / float(sum(saved_batches))
    w_new = np.asarray(batches, dtype=np.float64) / float(sum(batches))
    owed = (w_old[:, None] * saved.astype(np.float64)).sum(axis=0)
    rows = np.zeros((len(batches), saved.shape[1]), dtype=np.float32)
    dropped = 0
    for q, p in enumerate(pieces):
        who = np.flatnonzero(carries[:, q])
        if len(who) == 0:
            dropped += int(np.count_nonzero(owed[p.start:p.stop]))
            continue
        rows[who, p.start:p.stop] = (owed[p.start:p.stop] / w_new[who].sum()).astype(np.float32)
    return rows, dropped
