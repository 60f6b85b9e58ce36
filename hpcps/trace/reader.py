"""Reading traces: the whole file into NumPy arrays, checked against the schema.

    from hpcps.trace import open_trace
    tr = open_trace("results/runs/<run-id>/trace.h5")
    compute = tr.phase("compute")                   # structured array: rank, iteration, t_start, ...
    (compute["t_end"] - compute["t_start"]).mean()

Every problem with a file (missing, not HDF5, truncated, another schema version, a dataset or field
missing) is one TraceError naming the file and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcps.trace.errors import TraceError
from hpcps.trace.schema import (DTYPES, OPTIONAL_DATASETS, PHASE, PHASES, RANK_FIELDS, RANK_NUMBER_FIELDS,
                                REQUIRED_DATASETS, REQUIRED_ROOT_ATTRS, SCHEMA_NAME, SCHEMA_VERSION, STATUS_COMPLETE,
                                TRANSFER_KIND, empty)

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class Trace:
    """One trace file in memory. Times are seconds on rank 0's clock since the trace's time zero."""
    path: Path
    attrs: dict                      # root attributes: run_id, status, created, global_batch, ...
    meta: dict                       # inputs as given (job_toml, schedule_toml, cluster_toml, argv, ...)
    versions: dict
    ranks: np.ndarray                # one row per rank (schema RANK_FIELDS); strings as str
    shards: np.ndarray               # schema SHARD_DTYPE
    events: np.ndarray               # schema EVENT_DTYPE, sorted by iteration, rank, t_start
    transfers: np.ndarray            # schema TRANSFER_DTYPE
    iterations: np.ndarray           # schema ITERATION_DTYPE
    staleness: np.ndarray = field(default_factory=lambda: empty("staleness"))   # ssp and asp runs; else empty
    _by_phase: dict = field(default_factory=dict, repr=False)

    @property
    def complete(self) -> bool:
        """False for a run that was killed or is still running: the file holds what was flushed."""
        return self.attrs.get("status") == STATUS_COMPLETE

    @property
    def run_id(self) -> str:
        return str(self.attrs.get("run_id", self.path.stem))

    @property
    def n_ranks(self) -> int:
        return int(self.attrs["n_ranks"])

    @property
    def workers(self) -> np.ndarray:
        """Ranks that computed, ascending."""
        return np.sort(self.ranks["rank"][self.ranks["batch"] > 0])

    @property
    def servers(self) -> np.ndarray:
        return np.unique(self.shards["server"])

    @property
    def global_batch(self) -> int:
        return int(self.ranks["batch"].sum())

    def phase(self, name: str) -> np.ndarray:
        """Events of one phase (see hpcps.trace.schema.PHASES)."""
        if name not in PHASE:
            raise ValueError(f"unknown phase {name!r}; phases are {', '.join(PHASES)}")
        if name not in self._by_phase:
            self._by_phase[name] = self.events[self.events["phase"] == PHASE[name]]
        return self._by_phase[name]

    def transfers_of(self, kind: str) -> np.ndarray:
        return self.transfers[self.transfers["kind"] == TRANSFER_KIND[kind]]

    def rank_field(self, name: str) -> dict[int, object]:
        """{rank: value} of one ranks field, e.g. rank_field("node_type")."""
        return {int(r): v for r, v in zip(self.ranks["rank"], self.ranks[name])}

    def durations(self, name: str) -> np.ndarray:
        ev = self.phase(name)
        return ev["t_end"] - ev["t_start"]


def _open(path: Path):
    import h5py
    try:
        return h5py.File(path, "r", locking="best-effort")
    except OSError as first:
        text = str(first)
        if "truncated" in text:
            raise TraceError(path, f"truncated HDF5 file ({text})") from None
        if "already open for write" in text or "consistency flags" in text:
            # A run that is still going, or was killed, leaves the file marked as open by its SWMR writer.
            try:
                return h5py.File(path, "r", swmr=True, locking="best-effort")
            except OSError as second:
                text = str(second)
        raise TraceError(path, f"damaged or unreadable HDF5 file ({text})") from None


def _decode(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _attrs(obj) -> dict:
    return {k: (_decode(v.item()) if isinstance(v, np.generic) else _decode(v)) for k, v in obj.attrs.items()}


def _table(path: Path, f, name: str):
    """The dataset /name, checked to be a one-dimensional table of records."""
    import h5py
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise TraceError(path, f"'/{name}' is a {type(ds).__name__.lower()}, not a dataset of records")
    if ds.dtype.names is None or len(ds.shape) != 1:
        raise TraceError(path, f"dataset '/{name}' is not a table of records (dtype {ds.dtype}, shape {ds.shape})")
    return ds


def _records(path: Path, f, name: str, dtype: np.dtype) -> np.ndarray:
    ds = _table(path, f, name)
    names = ds.dtype.names or ()
    missing = [n for n in dtype.names if n not in names]
    if missing:
        raise TraceError(path, f"dataset '/{name}' lacks field(s) {', '.join(missing)} "
                               f"(schema version {SCHEMA_VERSION} has {', '.join(dtype.names)})")
    try:
        data = ds[...]
    except (OSError, ValueError, RuntimeError) as e:
        raise TraceError(path, f"cannot read dataset '/{name}': {e}") from None
    out = np.zeros(data.shape[0] if data.ndim else 0, dtype)
    for n in dtype.names:
        out[n] = data[n]
    return out


def _ranks(path: Path, f) -> np.ndarray:
    ds = _table(path, f, "ranks")
    names = ds.dtype.names or ()
    missing = [n for n in RANK_FIELDS if n not in names]
    if missing:
        raise TraceError(path, f"dataset '/ranks' lacks field(s) {', '.join(missing)}")
    data = ds[...]
    numbers = dict(RANK_NUMBER_FIELDS)
    dtype = np.dtype([(n, numbers.get(n, object)) for n in RANK_FIELDS])
    out = np.zeros(data.shape[0], dtype)
    for n in RANK_FIELDS:
        out[n] = [_decode(v) for v in data[n]] if n not in numbers else data[n]
    return out


def _text(f, key: str) -> str:
    return _decode(f[key][()]) if key in f else ""


def open_trace(path: str | Path) -> Trace:
    """Read a whole trace into memory. Raises TraceError for anything that is not a readable trace."""
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "file not found")
    if path.is_dir():
        raise TraceError(path, "is a directory, not a trace file")
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise TraceError(path, f"cannot read it: {e}") from None
    if head != _HDF5_SIGNATURE:
        # HDF5 also allows the superblock at 512, 1024, ... bytes; h5py.is_hdf5 checks those.
        import h5py
        if not h5py.is_hdf5(path):
            raise TraceError(path, "not an HDF5 file (an hpcps trace is HDF5; see docs/trace.md)")
    try:
        with _open(path) as f:
            return _read(path, f)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        # HDF5 finds some damage only when it reads the object concerned.
        raise TraceError(path, f"damaged or truncated HDF5 file ({type(e).__name__}: {e})") from None


def _read(path: Path, f) -> Trace:
    attrs = _attrs(f)
    if attrs.get("schema") != SCHEMA_NAME:
        raise TraceError(path, f"not an hpcps trace: the root attribute 'schema' is "
                               f"{attrs.get('schema', 'missing')!r}, expected {SCHEMA_NAME!r}")
    version = attrs.get("schema_version")           # _attrs gave NumPy scalars as Python numbers
    if not isinstance(version, int) or isinstance(version, bool):
        raise TraceError(path, f"the root attribute 'schema_version' is {version!r}, not an integer "
                               f"(this hpcps reads version {SCHEMA_VERSION})")
    if version != SCHEMA_VERSION:
        raise TraceError(path, f"trace schema version {version}, but this hpcps reads version {SCHEMA_VERSION}"
                               + (" (written by a newer hpcps: upgrade)" if version > SCHEMA_VERSION else ""))
    missing_attrs = [a for a in REQUIRED_ROOT_ATTRS if a not in attrs]
    if missing_attrs:
        raise TraceError(path, f"root attribute(s) {', '.join(missing_attrs)} missing")
    _check_root_attrs(path, attrs)
    for name in REQUIRED_DATASETS:
        if name not in f:
            raise TraceError(path, f"missing dataset '/{name}' (schema version {SCHEMA_VERSION} needs "
                                   f"{', '.join('/' + d for d in REQUIRED_DATASETS)})")
    arrays = {name: _records(path, f, name, DTYPES[name]) if name in f else empty(name) for name in DTYPES
              if name in f or name in OPTIONAL_DATASETS}
    ranks = _ranks(path, f)
    meta, versions = {}, {}
    if "meta" in f:
        meta = _attrs(f["meta"])
        meta["argv"] = json.loads(meta.get("argv", "[]"))
        for key in ("job_toml", "schedule_toml", "schedule_effective_toml", "cluster_toml"):
            meta[key] = _text(f["meta"], key)
        meta.pop("description", None)
        if "versions" in f["meta"]:
            versions = _attrs(f["meta/versions"])
            versions.pop("description", None)
    _check_values(path, arrays, ranks)
    _check_references(path, arrays, ranks, attrs.get("n_params"))
    ev = arrays["events"]
    arrays["events"] = ev[np.lexsort((ev["t_start"], ev["rank"], ev["iteration"]))]
    return Trace(path, attrs, meta, versions, ranks, arrays["shards"], arrays["events"], arrays["transfers"],
                 arrays["iterations"], arrays["staleness"])


# Times are seconds since the trace's time zero: a run of 30 years is beyond any trace, and past it the
# exports' integer nanoseconds would overflow.
MAX_TIME_S = 1e9
# Fields that may hold NaN: a loss that was not measured, a rate of an iteration that took no time.
_MAY_BE_NAN = {"loss", "samples_per_s"}
_COUNT_ATTRS = ("global_batch", "iterations_planned", "iterations_flushed", "n_params")
_RATE_ATTRS = ("wall_s", "samples_per_s")
_ENUMS = {"phase": PHASE, "kind": TRANSFER_KIND}


def _check_root_attrs(path: Path, attrs: dict) -> None:
    n = attrs.get("n_ranks")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TraceError(path, f"the root attribute 'n_ranks' is {n!r}, not a number of ranks")
    for key in ("status", "run_id", "created"):
        if not isinstance(attrs.get(key), str):
            raise TraceError(path, f"the root attribute '{key}' is {attrs.get(key)!r}, not a string")
    t0 = attrs.get("t0_unix_s")
    if isinstance(t0, bool) or not isinstance(t0, (int, float, np.number)) or not np.isfinite(t0):
        raise TraceError(path, f"the root attribute 't0_unix_s' is {t0!r}, not a finite number of seconds")
    # What a run adds (hpcps.ps.runtime, hpcps.train): optional, but when there, of their kind.
    for key in _COUNT_ATTRS:
        v = attrs.get(key, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise TraceError(path, f"the root attribute '{key}' is {v!r}, not a count (an integer >= 0)")
    for key in _RATE_ATTRS:                     # NaN: not measured (a run of no time)
        v = attrs.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or np.isinf(v) or v < 0:
            raise TraceError(path, f"the root attribute '{key}' is {v!r}, not a finite number >= 0")
    if "final_metrics" in attrs:
        _final_metrics(path, attrs["final_metrics"])


def _final_metrics(path: Path, text) -> dict[str, float]:
    """The root attribute final_metrics: JSON of an object of numbers (NaN where a metric was not finite)."""
    try:
        metrics = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        metrics = None
    if not isinstance(metrics, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
        raise TraceError(path, f"the root attribute 'final_metrics' is {str(text)[:60]!r}, not a JSON object of "
                               "numbers")
    return metrics


def _check_references(path: Path, arrays: dict[str, np.ndarray], ranks: np.ndarray, n_params) -> None:
    """Every rank a row names is in /ranks, every shard in /shards, and the shards cut the parameters
    into ranges: an analysis would otherwise count a server, a peer or a message that never was."""
    known_ranks = ranks["rank"]
    shards = arrays["shards"]
    if np.unique(shards["shard"]).size != shards.size:
        raise TraceError(path, "dataset '/shards' lists a shard twice")
    if isinstance(n_params, int) and shards.size:
        # One contiguous range each, end to end from 0 to n_params (hpcps.ps.sharding).
        order = np.argsort(shards["start"], kind="stable")
        start, stop = shards["start"][order], shards["stop"][order]
        if start[0] != 0 or stop[-1] != n_params or (start > stop).any() or (start[1:] != stop[:-1]).any():
            ranges = ", ".join(f"{a}:{b}" for a, b in zip(start[:8], stop[:8]))
            raise TraceError(path, f"dataset '/shards': the ranges {ranges} do not cut the {n_params} parameters "
                                   "end to end")
    refs = [("shards", "server", known_ranks, "/ranks"), ("events", "rank", known_ranks, "/ranks"),
            ("transfers", "rank", known_ranks, "/ranks"), ("transfers", "peer", known_ranks, "/ranks"),
            ("transfers", "shard", shards["shard"], "/shards"), ("staleness", "rank", known_ranks, "/ranks"),
            ("staleness", "shard", shards["shard"], "/shards")]
    for name, field_name, known, where in refs:
        col = arrays[name][field_name]
        ok = np.isin(col, known)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise TraceError(path, f"dataset '/{name}' row {i}: {field_name} {int(col[i])} is not in {where}")


def _check_values(path: Path, arrays: dict[str, np.ndarray], ranks: np.ndarray) -> None:
    """Every number in range: finite times within MAX_TIME_S, enumerations known, ranks unique and
    non-negative. Analyses and exports assume all of it. (An end may come a little before its start:
    the clock correction moves the times of a rank's events, and of messages, by its estimate.)"""
    from hpcps.trace.schema import DIRECTION
    enums = dict(_ENUMS, direction=DIRECTION)
    for name, rows in list(arrays.items()) + [("ranks", ranks)]:
        for field_name in rows.dtype.names:
            col = rows[field_name]
            if col.dtype.kind == "f":
                bad = ~np.isfinite(col) if field_name not in _MAY_BE_NAN else np.isinf(col)
                if field_name.startswith("t_") or field_name == "time_s":
                    bad |= np.abs(np.nan_to_num(col)) > MAX_TIME_S
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    what = f"a finite time (within {MAX_TIME_S:g} s)" if field_name.startswith("t_") else "finite"
                    raise TraceError(path, f"dataset '/{name}' row {i}: {field_name} is {float(col[i])!r}, not {what}")
            if field_name in enums and rows.size:
                known = np.isin(col, list(enums[field_name].values()))
                if not known.all():
                    i = int(np.flatnonzero(~known)[0])
                    raise TraceError(path, f"dataset '/{name}' row {i}: {field_name} is {int(col[i])}, not one of "
                                           f"{', '.join(enums[field_name])}")
        # Byte and sample counts too: a negative one turned into negative bandwidths and rates.
        for field_name in ("rank", "iteration", "peer", "server", "shard", "batch", "threads", "nbytes", "samples"):
            if field_name in (rows.dtype.names or ()) and rows.size and rows[field_name].min() < 0:
                raise TraceError(path, f"dataset '/{name}': a negative {field_name}")
    r = ranks["rank"]
    if np.unique(r).size != r.size:
        raise TraceError(path, "dataset '/ranks' lists a rank twice")
