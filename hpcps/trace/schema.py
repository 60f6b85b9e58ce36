"""The trace file format: dataset names, record types, enumerations, units and meanings, version.

Pure data: the writer creates datasets from these definitions, the reader checks files against them,
and docs/trace.md describes the same thing in prose. Bump SCHEMA_VERSION whenever a reader of the old
version could misread a new file (a field removed, renamed or given another meaning); adding datasets
or attributes that old readers ignore keeps the version.
"""

from __future__ import annotations

import numpy as np

SCHEMA_NAME = "hpcps-trace"
SCHEMA_VERSION = 1

# What a rank did, in the order it happens within one BSP iteration. "iteration" spans the rank's whole
# iteration and contains the others; "wait" lies inside a pull or push window (see derive.py).
PHASES = ("iteration", "pull", "data", "compute", "push", "aggregate", "wait", "report", "eval", "trace",
          "checkpoint")
PHASE = {name: code for code, name in enumerate(PHASES)}
PHASE_MEANINGS = {
    "iteration": "the rank's whole iteration, from its start to the start of its next one",
    "pull": "the pull window: posting, local copies and waiting for every shard of the parameters",
    "data": "gathering this worker's k samples of the step",
    "compute": "zeroing gradients, forward and backward pass on the worker's k samples",
    "push": "the push window: posting, local copies and waiting for every gradient slice",
    "aggregate": "server-side weighted averaging of the pushes and the optimiser step, all shards of the rank",
    "wait": "waiting at the barrier: inside a pull or push window, the time until the last peer "
            "this rank exchanges with was ready (derived from both ends' post times)",
    "report": "the periodic reduction of loss and accuracy for progress lines",
    "eval": "evaluation on rank 0 during training",
    "trace": "flushing the trace: handing this rank's buffered events to the writer rank (rank 0, which also "
             "works out the waits and appends everything to this file)",
    "checkpoint": "a checkpoint at an iteration boundary: gathering the state on rank 0 and, there, writing it",
}

TRANSFER_KINDS = ("pull", "push")
TRANSFER_KIND = {name: code for code, name in enumerate(TRANSFER_KINDS)}
DIRECTIONS = ("send", "recv", "local")
DIRECTION = {name: code for code, name in enumerate(DIRECTIONS)}

ROLES = ("idle", "worker", "server", "server+worker")

# In memory the enumerations are plain uint8 codes; in the file they are HDF5 enums (see writer.py), so
# h5dump and other readers show their names.
EVENT_DTYPE = np.dtype([
    ("rank", "<i4"), ("iteration", "<i4"), ("phase", "u1"),
    ("t_start", "<f8"), ("t_end", "<f8"), ("batch", "<i4"), ("loss", "<f4"),
])
TRANSFER_DTYPE = np.dtype([
    ("rank", "<i4"), ("iteration", "<i4"), ("kind", "u1"), ("direction", "u1"),
    ("shard", "<i4"), ("peer", "<i4"), ("nbytes", "<i8"),
    ("t_post", "<f8"), ("t_start", "<f8"), ("t_end", "<f8"),
])
ITERATION_DTYPE = np.dtype([
    ("iteration", "<i4"), ("t_start", "<f8"), ("t_end", "<f8"), ("time_s", "<f8"),
    ("samples", "<i8"), ("samples_per_s", "<f8"), ("loss", "<f8"),
])
STALENESS_DTYPE = np.dtype([
    ("rank", "<i4"), ("iteration", "<i4"), ("shard", "<i4"), ("piece", "<i4"), ("version", "<i8"),
    ("staleness", "<i8"),
])
SHARD_DTYPE = np.dtype([("shard", "<i4"), ("server", "<i4"), ("start", "<i8"), ("stop", "<i8"), ("nbytes", "<i8")])
# Strings are variable-length UTF-8 in the file; the reader returns them as str.
RANK_STRING_FIELDS = ("host", "node_name", "node_type", "role", "device")
RANK_NUMBER_FIELDS = (("rank", "<i4"), ("threads", "<i4"), ("batch", "<i4"), ("pid", "<i8"),
                      ("clock_offset_s", "<f8"), ("clock_rtt_s", "<f8"))
RANK_FIELDS = ("rank",) + RANK_STRING_FIELDS + tuple(n for n, _ in RANK_NUMBER_FIELDS[1:])

TIME_NOTE = ("seconds since the trace's time zero on rank 0's clock (each rank's clock offset is in /ranks; the "
             "root attribute t0_unix_s is time zero as Unix time)")

# dataset -> (description, {field: (units, meaning)})
DATASETS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "events": ("Timed phases, one row per rank, iteration and phase.", {
        "rank": ("", "MPI rank (COMM_WORLD) that did it"),
        "iteration": ("", "training iteration, from 0"),
        "phase": ("enum", "what the rank did: " + "; ".join(f"{k}: {v}" for k, v in PHASE_MEANINGS.items())),
        "t_start": ("s", "start, " + TIME_NOTE),
        "t_end": ("s", "end, " + TIME_NOTE),
        "batch": ("samples", "for data, compute and iteration events of a worker: its batch size k; else 0"),
        "loss": ("", "for compute events: the worker's mean training loss on its k samples; else NaN"),
    }),
    "transfers": ("One row per shard message (or local copy, for a rank that serves itself) and iteration, "
                  "as seen by the rank that posted it; each message appears twice, once at each end.", {
        "rank": ("", "rank this row is recorded on"),
        "iteration": ("", "training iteration"),
        "kind": ("enum", "pull: parameters from a server to a worker; push: gradients from a worker to a server"),
        "direction": ("enum", "send, recv, or local (a rank serving itself by a copy, no message)"),
        "shard": ("", "shard index (see /shards)"),
        "peer": ("", "the rank at the other end (the rank itself for local)"),
        "nbytes": ("B", "bytes moved"),
        "t_post": ("s", "when this rank posted the request (the start of its pull or push window; for a local copy, "
                        "when the copy began), " + TIME_NOTE),
        "t_start": ("s", "when the data could start to move: the later of both ends' post times, bounded by "
                         "t_end (send rows that completed before the receiver posted, i.e. eager sends, keep "
                         "their own post time), " + TIME_NOTE),
        "t_end": ("s", "when this rank saw the request complete, " + TIME_NOTE),
    }),
    "iterations": ("Per-iteration summary over all ranks.", {
        "iteration": ("", "training iteration"),
        "t_start": ("s", "earliest start of the iteration on any rank, " + TIME_NOTE),
        "t_end": ("s", "latest end of the iteration on any rank, " + TIME_NOTE),
        "time_s": ("s", "iteration time: from this iteration's t_start to the next one's (t_end - t_start for "
                        "the last iteration); these add up to the run's wall time"),
        "samples": ("samples", "samples processed: the sum of the workers' k"),
        "samples_per_s": ("samples/s", "samples / time_s"),
        "loss": ("", "training loss: the workers' losses weighted by their k"),
    }),
    "staleness": ("Under ssp and asp, one row per worker, step and piece: the version of the piece the step "
                  "computed on and how stale it was. Empty under bsp, where every step uses the parameters "
                  "after the previous one's update (staleness 0); absent from traces written before it existed.", {
        "rank": ("", "the worker's rank"),
        "iteration": ("", "the worker's step (its clock), from 0"),
        "shard": ("", "shard index (see /shards)"),
        "piece": ("", "piece of the message plan (pieces cut each shard into messages of at most [exchange] "
                      "bucket_mb, in flat-vector order)"),
        "version": ("", "the piece's version the step computed on: ssp, rounds aggregated (0: the initial "
                        "values); asp, pushes applied to the piece"),
        "staleness": ("versions", "the version the step's update was applied to minus the version it computed "
                                  "on: ssp, rounds (the step's clock minus version, 0 to training.staleness); asp, "
                                  "other workers' pushes applied between the read and this worker's push"),
    }),
    "shards": ("The sharding plan: the flat parameter vector cut into one contiguous shard per server.", {
        "shard": ("", "shard index"),
        "server": ("", "rank holding the shard"),
        "start": ("elements", "first element of the flat float32 parameter vector"),
        "stop": ("elements", "one past the last element"),
        "nbytes": ("B", "size of the shard (and of every pull or push message of it)"),
    }),
    "ranks": ("What each rank was.", {
        "rank": ("", "MPI rank"),
        "host": ("", "host name the process ran on"),
        "node_name": ("", "node this rank stands for (the host name unless a cluster file says otherwise)"),
        "node_type": ("", "node type from the cluster file; 'local' without one"),
        "role": ("", "idle, worker, server or server+worker"),
        "device": ("", "where the worker computed (cpu, cuda, or cuda:<name>); servers compute on cpu"),
        "threads": ("", "PyTorch intra-op threads"),
        "batch": ("samples", "the worker's batch size k (0 for a rank that is not a worker)"),
        "pid": ("", "process id"),
        "clock_offset_s": ("s", "estimated offset of this rank's clock against rank 0's (local - rank 0), "
                                "subtracted from every time the rank recorded"),
        "clock_rtt_s": ("s", "round-trip time of the best ping-pong used for the estimate; the offset is "
                             "exact to within half of it"),
    }),
}

# Datasets added after version 1's first files: a reader takes a file without them as having none.
OPTIONAL_DATASETS = ("staleness",)
REQUIRED_DATASETS = tuple(d for d in DATASETS if d not in OPTIONAL_DATASETS)
DTYPES = {"events": EVENT_DTYPE, "transfers": TRANSFER_DTYPE, "iterations": ITERATION_DTYPE, "shards": SHARD_DTYPE,
          "staleness": STALENESS_DTYPE}
# Appended to during the run (chunked, resizable); the others are written once at the start.
GROWING = ("events", "transfers", "iterations", "staleness")

REQUIRED_ROOT_ATTRS = ("schema", "schema_version", "status", "run_id", "created", "t0_unix_s", "n_ranks")
STATUS_RUNNING, STATUS_COMPLETE = "running", "complete"


def empty(name: str, n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=DTYPES[name])
