"""What a trial teaches the model: per rank (and per iteration where the source has it) what the rank was
and how long each phase of its iteration took. One format for every backend:

    iteration     the iteration it was measured in (-1: a mean over the trial's iterations)
    rank          MPI rank
    node          index of the node in the cluster file
    type          index of the node's type in cluster.types
    batch         the worker's batch k (0: not a worker)
    threads       the worker's threads (0: not a worker)
    node_threads  threads all workers on the node ask for
    server        the rank holds a parameter-server shard
    compute_s     seconds of the worker's step (0 for a server-only rank)
    pull_s        seconds the rank's pull messages were moving once every peer had posted
    push_s        the same for the push
    aggregate_s   seconds of the server's update (0 for a worker-only rank)

Pure data and its conversions: from the simulator's RankStats, from a trace, to and from JSON.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from hpcps.cluster.description import Cluster

OBS_DTYPE = np.dtype([
    ("iteration", "<i4"), ("rank", "<i4"), ("node", "<i4"), ("type", "<i4"), ("batch", "<i4"),
    ("threads", "<i4"), ("node_threads", "<i4"), ("server", "?"),
    ("compute_s", "<f8"), ("pull_s", "<f8"), ("push_s", "<f8"), ("aggregate_s", "<f8"),
])
FIELDS: tuple[str, ...] = tuple(OBS_DTYPE.names or ())
TIME_FIELDS = ("compute_s", "pull_s", "push_s", "aggregate_s")


def empty(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=OBS_DTYPE)


def type_index(cluster: Cluster) -> dict[str, int]:
    return {t.name: j for j, t in enumerate(cluster.types)}


def from_rank_stats(cluster: Cluster, ranks: Iterable, iteration: int = -1) -> np.ndarray:
    """Observations from hpcps.sim RankStats (one per rank)."""
    ranks = list(ranks)
    types = type_index(cluster)
    node_threads: dict[str, int] = {}
    for r in ranks:
        if r.batch > 0:
            node_threads[r.node] = node_threads.get(r.node, 0) + r.threads
    out = empty(len(ranks))
    for i, r in enumerate(ranks):
        node = cluster.index(r.node)
        out[i] = (iteration, r.rank, node, types[cluster.nodes[node].type.name], r.batch, r.threads,
                  node_threads.get(r.node, 0), r.server, r.compute_s, r.pull_s, r.push_s, r.aggregate_s)
    return out


def from_trace(cluster: Cluster, trace, skip_iterations: int = 1) -> np.ndarray:
    """Observations from an hpcps.trace Trace: one row per rank and iteration, the first skip_iterations
    iterations left out (start-up: the first pull waits for every rank to load its data)."""
    from hpcps.trace.schema import PHASE
    types = type_index(cluster)
    ranks = trace.ranks
    node_of, batch_of, threads_of = {}, {}, {}
    for row in ranks:
        r = int(row["rank"])
        name = str(row["node_name"])
        if not cluster.has(name):
            raise ValueError(f"trace {trace.path}: rank {r} stands for node {name!r}, which is not in cluster "
                             f"{cluster.name!r}")
        node_of[r] = cluster.index(name)
        batch_of[r] = int(row["batch"])
        threads_of[r] = int(row["threads"]) if int(row["batch"]) > 0 else 0
    node_threads: dict[int, int] = {}
    for r, k in batch_of.items():
        if k > 0:
            node_threads[node_of[r]] = node_threads.get(node_of[r], 0) + threads_of[r]
    servers = {int(s) for s in trace.shards["server"][trace.shards["nbytes"] > 0]} if len(trace.shards) else set()

    ev = trace.events
    ev = ev[ev["iteration"] >= skip_iterations]
    # Durations summed per (rank, iteration, phase); "data" (gathering the batch) counts as compute.
    wanted = {"compute": "compute_s", "data": "compute_s", "pull": "pull_s", "push": "push_s",
              "aggregate": "aggregate_s", "wait": "wait"}
    keys = sorted({(int(r), int(i)) for r, i in zip(ev["rank"], ev["iteration"])})
    index = {k: n for n, k in enumerate(keys)}
    acc = {f: np.zeros(len(keys)) for f in ("compute_s", "pull_s", "push_s", "aggregate_s")}
    wait_pull, wait_push = np.zeros(len(keys)), np.zeros(len(keys))
    dur = ev["t_end"] - ev["t_start"]
    # A wait event lies inside a pull or push window: moving time is the window less its waits.
    windows: dict[int, list[tuple[str, float, float]]] = {}
    for e in ev:
        name = _phase_name(int(e["phase"]), PHASE)
        key = index[(int(e["rank"]), int(e["iteration"]))]
        if name in ("pull", "push"):
            windows.setdefault(key, []).append((name, float(e["t_start"]), float(e["t_end"])))
    for e, d in zip(ev, dur):
        name = _phase_name(int(e["phase"]), PHASE)
        key = index[(int(e["rank"]), int(e["iteration"]))]
        field = wanted.get(name)
        if field is None:
            continue
        if field == "wait":
            mid = 0.5 * (float(e["t_start"]) + float(e["t_end"]))
            for w, t0, t1 in windows.get(key, []):
                if t0 <= mid <= t1:
                    (wait_pull if w == "pull" else wait_push)[key] += d
                    break
            continue
        acc[field][key] += d
    acc["pull_s"] = np.maximum(acc["pull_s"] - wait_pull, 0.0)
    acc["push_s"] = np.maximum(acc["push_s"] - wait_push, 0.0)
    out = empty(len(keys))
    for n, (r, it) in enumerate(keys):
        node = node_of[r]
        k = batch_of[r]
        out[n] = (it, r, node, types[cluster.nodes[node].type.name], k, threads_of[r],
                  node_threads.get(node, 0), r in servers, acc["compute_s"][n] if k > 0 else 0.0,
                  acc["pull_s"][n], acc["push_s"][n], acc["aggregate_s"][n] if r in servers else 0.0)
    return out


def _phase_name(code: int, phase: dict[str, int]) -> str:
    for name, c in phase.items():
        if c == code:
            return name
    return "?"


def to_json(obs: np.ndarray) -> dict[str, list]:
    """Column-wise lists (JSON has no structured arrays)."""
    return {f: obs[f].tolist() for f in FIELDS}


def from_json(data: dict[str, list]) -> np.ndarray:
    missing = [f for f in FIELDS if f not in data]
    if missing:
        raise ValueError(f"observations lack the fields {', '.join(missing)}")
    n = len(data[FIELDS[0]])
    out = empty(n)
    for f in FIELDS:
        if len(data[f]) != n:
            raise ValueError(f"observation field {f} has {len(data[f])} values, {FIELDS[0]} has {n}")
        out[f] = data[f]
    return out
