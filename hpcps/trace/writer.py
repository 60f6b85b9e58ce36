"""The one process that writes a trace file (rank 0): metadata once, then appended event blocks.

The file is opened in HDF5's single-writer/multiple-reader (SWMR) mode after the metadata is written.
In that mode HDF5 orders its metadata writes so that the file on disk is consistent at every moment,
which is what makes a killed run leave a readable file: everything up to the last flush is there.
The price: until the run closes the file cleanly, HDF5 marks it as open for writing, and tools other
than hpcps.trace need `h5clear -s FILE` (or a SWMR read) to open a trace whose run was killed.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import h5py
import numpy as np

from hpcps.trace.derive import finish_rows, iteration_rows
from hpcps.trace.errors import TraceWriteError
from hpcps.trace.metadata import RunInfo
from hpcps.trace.schema import (DATASETS, DIRECTION, DTYPES, GROWING, PHASE, RANK_NUMBER_FIELDS, RANK_STRING_FIELDS,
                                SCHEMA_NAME, SCHEMA_VERSION, STATUS_COMPLETE, STATUS_RUNNING, TRANSFER_KIND)

# Rows per chunk: large enough that appends touch few chunks, small enough that a short run's file
# stays small (HDF5 allocates whole chunks).
_CHUNK_ROWS = {"events": 4096, "transfers": 4096, "iterations": 1024}
# Oldest format that has SWMR (HDF5 1.10), so the files open with any HDF5 from 1.10 on.
LIBVER = ("v110", "v110")


def _enum(mapping: dict[str, int]):
    return h5py.enum_dtype(mapping, basetype="u1")


def file_dtype(name: str) -> np.dtype:
    """The on-disk record type: the schema's, with enumerations as HDF5 enums."""
    enums = {"phase": _enum(PHASE), "kind": _enum(TRANSFER_KIND), "direction": _enum(DIRECTION)}
    return np.dtype([(f, enums.get(f, DTYPES[name].fields[f][0])) for f in DTYPES[name].names])


def rank_dtype() -> np.dtype:
    s = h5py.string_dtype()
    fields = [RANK_NUMBER_FIELDS[0]] + [(f, s) for f in RANK_STRING_FIELDS] + list(RANK_NUMBER_FIELDS[1:])
    return np.dtype(fields)


def _describe(ds, name: str) -> None:
    description, fields = DATASETS[name]
    ds.attrs["description"] = description
    for field_name, (units, meaning) in fields.items():
        ds.attrs[f"{field_name}.units"] = units
        ds.attrs[f"{field_name}.meaning"] = meaning


def _text(group, name: str, text: str, description: str) -> None:
    ds = group.create_dataset(name, data=text, dtype=h5py.string_dtype())
    ds.attrs["description"] = description


class TraceWriter:
    def __init__(self, path: str | Path, info: RunInfo, *, ranks: list[dict], shards: np.ndarray,
                 versions: dict[str, str], t0_unix_s: float, attrs: dict):
        self.path = Path(path)
        self.rows = {name: 0 for name in GROWING}
        self._pending: np.ndarray | None = None      # last iteration row: its time needs the next start
        self.file = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # "x": create, or fail if the file exists: two runs given one path never share (or truncate)
            # one file, even when both passed the check for an existing file before either created it.
            self.file = h5py.File(self.path, "x", libver=LIBVER, locking="best-effort")
        except (OSError, RuntimeError, ValueError) as e:
            raise TraceWriteError(self.path, e, kept=False) from None
        try:
            self._create(info, ranks, shards, versions, t0_unix_s, attrs)
        except (OSError, RuntimeError, ValueError) as e:
            # Nothing is left of a trace that could not even be started (a full disk, a size limit).
            self._abandon()
            self.path.unlink(missing_ok=True)
            raise TraceWriteError(self.path, e, kept=False) from None

    def _create(self, info: RunInfo, ranks: list[dict], shards: np.ndarray, versions: dict[str, str],
                t0_unix_s: float, attrs: dict) -> None:
        f = self.file
        f.attrs.update({"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "status": STATUS_RUNNING,
                        "run_id": info.run_id, "created": info.created, "t0_unix_s": t0_unix_s,
                        "n_ranks": len(ranks), "time_units": "s"})
        f.attrs.update(attrs)
        meta = f.create_group("meta")
        meta.attrs["description"] = "What ran: the inputs as given and the software versions."
        meta.attrs["argv"] = json.dumps(list(info.argv))
        for key in ("job_path", "schedule_path", "cluster_path"):
            meta.attrs[key] = getattr(info, key)
        _text(meta, "job_toml", info.job_toml, "the job file's text as given (TOML)")
        _text(meta, "schedule_toml", info.schedule_toml, "the schedule file's text as given (TOML); empty when "
              "the job's [schedule] or the default schedule was used")
        _text(meta, "schedule_effective_toml", info.schedule_effective_toml, "the schedule that ran (TOML)")
        _text(meta, "cluster_toml", info.cluster_toml, "the cluster file's text as given (TOML); empty without one")
        versions_group = meta.create_group("versions")
        versions_group.attrs["description"] = "software versions on rank 0, and the MPI library"
        versions_group.attrs.update({k: str(v) for k, v in versions.items()})

        rank_rows = np.zeros(len(ranks), rank_dtype())
        for i, r in enumerate(sorted(ranks, key=lambda r: r["rank"])):
            for field_name in rank_rows.dtype.names:
                rank_rows[field_name][i] = r[field_name]
        _describe(f.create_dataset("ranks", data=rank_rows), "ranks")
        _describe(f.create_dataset("shards", data=np.asarray(shards).astype(file_dtype("shards"))), "shards")
        for name in GROWING:
            ds = f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=file_dtype(name),
                                  chunks=(_CHUNK_ROWS[name],))
            _describe(ds, name)
        f.swmr_mode = True

    def append(self, events: np.ndarray, transfers: np.ndarray, final: bool = False) -> None:
        """Append one block (all ranks, whole iterations) and make it durable in the file."""
        try:
            self._append(events, transfers, final)
        except (OSError, RuntimeError) as e:
            self._abandon()
            raise TraceWriteError(self.path, e, kept=True) from None

    def _abandon(self) -> None:
        """Let go of a file that can no longer be written: HDF5 would retry its flush at every close."""
        if self.file is not None:
            with contextlib.suppress(Exception):
                self.file.close()
            self.file = None

    def _append(self, events: np.ndarray, transfers: np.ndarray, final: bool) -> None:
        summary = iteration_rows(events)
        if self._pending is not None:
            finish_rows(self._pending, summary["t_start"][0] if summary.size else None)
            summary = np.concatenate([self._pending, summary])
            self._pending = None
        if summary.size and not final:
            self._pending, summary = summary[-1:].copy(), summary[:-1]
        elif summary.size:
            finish_rows(summary[-1:])
        order = np.lexsort((events["t_start"], events["rank"], events["iteration"]))
        torder = np.lexsort((transfers["t_post"], transfers["rank"], transfers["iteration"]))
        for name, rows in (("events", events[order]), ("transfers", transfers[torder]), ("iterations", summary)):
            if rows.size == 0:
                continue
            ds, n = self.file[name], self.rows[name]
            ds.resize((n + rows.size,))
            ds[n:] = rows.astype(file_dtype(name))
            self.rows[name] = n + rows.size
        self.file.flush()

    def close(self, complete: bool, attrs: dict | None = None) -> None:
        """Close the file; with complete, reopen it outside SWMR and mark the run as finished."""
        if self.file is None:
            return
        try:
            self.file.close()
            self.file = None
            if complete:
                with h5py.File(self.path, "r+", locking="best-effort") as f:
                    f.attrs["status"] = STATUS_COMPLETE
                    f.attrs["iterations_flushed"] = int(f["iterations"].shape[0])
                    f.attrs.update(attrs or {})
        except (OSError, RuntimeError) as e:
            self._abandon()
            raise TraceWriteError(self.path, e, kept=True) from None
