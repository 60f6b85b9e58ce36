"""A synthetic BSP trace with known timings, built the way the recorder and writer build real ones.

Dedicated servers (one shard each) and workers with batch k_w; every time is a closed-form function of
the model's parameters, so tests can check the analysis against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcps.trace.derive import fill_transfer_starts, finish_rows, iteration_rows, wait_events
from hpcps.trace.reader import Trace
from hpcps.trace.schema import (
    DIRECTION,
    EVENT_DTYPE,
    PHASE,
    RANK_FIELDS,
    RANK_NUMBER_FIELDS,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SHARD_DTYPE,
    STATUS_COMPLETE,
    TRANSFER_DTYPE,
    TRANSFER_KIND,
)


@dataclass
class Model:
    servers: tuple[int, ...] = (0,)
    batches: dict[int, int] = None          # worker rank -> k
    compute_a: float = 1e-3                 # compute seconds = a + b * k
    compute_b: float = 1e-4
    data_per_sample: float = 1e-5
    shard_bytes: int = 400_000
    message_s: float = 2e-4                 # time one message takes once both ends have posted
    aggregate_s: float = 3e-4
    overhead_s: float = 2e-5                # the loop's own work between phases
    iterations: int = 12

    def __post_init__(self):
        if self.batches is None:
            self.batches = {1: 8, 2: 16, 3: 40}


def build(model: Model) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """(events, transfers, iterations, shards, rank rows) of the model, derived like the writer does."""
    m = model
    ranks = sorted(set(m.servers) | set(m.batches))
    ev, tr = [], []

    def add(rank, it, phase, t0, t1, k=0, loss=np.nan):
        ev.append((rank, it, PHASE[phase], t0, t1, k, loss))

    def msg(rank, it, kind, direction, shard, peer, post, end):
        tr.append((rank, it, TRANSFER_KIND[kind], DIRECTION[direction], shard, peer, m.shard_bytes, post, post, end))

    server_start = {s: 0.0 for s in m.servers}      # when each server starts its pull (iteration begin)
    worker_start = {w: 0.0 for w in m.batches}
    for it in range(m.iterations):
        pull_end, push_start = {}, {}
        for w, k in m.batches.items():
            p0 = worker_start[w] + m.overhead_s
            ends = []
            for i, s in enumerate(m.servers):
                start = max(p0, server_start[s] + m.overhead_s)
                msg(w, it, "pull", "recv", i, s, p0, start + m.message_s)
                ends.append(start + m.message_s)
            pull_end[w] = max(ends)
            add(w, it, "pull", p0, pull_end[w])
            d1 = pull_end[w] + m.data_per_sample * k
            add(w, it, "data", pull_end[w], d1, k)
            c1 = d1 + m.compute_a + m.compute_b * k
            add(w, it, "compute", d1, c1, k, loss=1.0 / (it + 1))
            push_start[w] = c1 + m.overhead_s
        agg_end = {}
        for i, s in enumerate(m.servers):
            s0 = server_start[s] + m.overhead_s
            sends = []
            for w in m.batches:
                start = max(s0, worker_start[w] + m.overhead_s)
                msg(s, it, "pull", "send", i, w, s0, start + m.message_s)
                sends.append(start + m.message_s)
            add(s, it, "pull", s0, max(sends))
            u0 = max(sends) + m.overhead_s
            recvs = []
            for w in m.batches:
                start = max(u0, push_start[w])
                msg(s, it, "push", "recv", i, w, u0, start + m.message_s)
                recvs.append(start + m.message_s)
            add(s, it, "push", u0, max(recvs))
            agg_end[s] = max(recvs) + m.aggregate_s
            add(s, it, "aggregate", max(recvs), agg_end[s])
        for w, k in m.batches.items():
            ends = []
            for i, s in enumerate(m.servers):
                start = max(push_start[w], _server_push_post(ev, s, it))
                msg(w, it, "push", "send", i, s, push_start[w], start + m.message_s)
                ends.append(start + m.message_s)
            add(w, it, "push", push_start[w], max(ends))
            add(w, it, "iteration", worker_start[w], max(ends) + m.overhead_s, k)
            worker_start[w] = max(ends) + m.overhead_s
        for s in m.servers:
            add(s, it, "iteration", server_start[s], agg_end[s] + m.overhead_s)
            server_start[s] = agg_end[s] + m.overhead_s
    events = np.array(ev, dtype=EVENT_DTYPE)
    transfers = fill_transfer_starts(np.array(tr, dtype=TRANSFER_DTYPE))
    events = np.concatenate([events, wait_events(events, transfers)])
    events = events[np.lexsort((events["t_start"], events["rank"], events["iteration"]))]
    rows = iteration_rows(events)
    finish_rows(rows)
    shards = np.array([(i, s, 0, 0, m.shard_bytes) for i, s in enumerate(m.servers)], dtype=SHARD_DTYPE)
    rank_rows = [{"rank": r, "host": "h", "node_name": f"n{r}",
                  "node_type": "fast" if m.batches.get(r, 0) > 20 else "slow",
                  "role": "server" if r in m.servers else "worker", "device": "cpu", "threads": 1,
                  "batch": m.batches.get(r, 0), "pid": 1000 + r, "clock_offset_s": 0.0, "clock_rtt_s": 0.0}
                 for r in ranks]
    return events, transfers, rows, shards, rank_rows


def _server_push_post(ev: list, server: int, it: int) -> float:
    for rank, i, phase, t0, _t1, _k, _loss in ev:
        if rank == server and i == it and phase == PHASE["push"]:
            return t0
    raise AssertionError("server push window not built yet")


def trace(model: Model | None = None, path: str = "synthetic.h5") -> Trace:
    events, transfers, rows, shards, rank_rows = build(model or Model())
    numbers = dict(RANK_NUMBER_FIELDS)
    ranks = np.zeros(len(rank_rows), np.dtype([(n, numbers.get(n, object)) for n in RANK_FIELDS]))
    for n in RANK_FIELDS:
        ranks[n] = [r[n] for r in rank_rows]
    attrs = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "status": STATUS_COMPLETE,
             "run_id": "synthetic", "n_ranks": len(rank_rows), "job_name": "synthetic", "workload": "none"}
    return Trace(Path(path), attrs, {}, {}, ranks, shards, events, transfers, rows)


def own_rate_trace(sync: str) -> Trace:
    """Two workers stepping at their own rates, as under asp: rank 1 every 1 ms, rank 2 every 4 ms, 8
    samples each, 40 steps; rank 0 serves. No messages: only the steps matter here."""
    ev = []
    for w, step in ((1, 1e-3), (2, 4e-3)):
        for i in range(40):
            ev.append((w, i, PHASE["compute"], i * step, i * step + 0.5 * step, 8, 1.0))
            ev.append((w, i, PHASE["iteration"], i * step, (i + 1) * step, 8, np.nan))
    events = np.array(ev, dtype=EVENT_DTYPE)
    events = events[np.lexsort((events["t_start"], events["rank"], events["iteration"]))]
    rows = iteration_rows(events)
    finish_rows(rows)
    base = trace(Model(servers=(0,), batches={1: 8, 2: 8}))
    attrs = dict(base.attrs, sync=sync, global_batch=16)
    return Trace(base.path, attrs, {}, {}, base.ranks, base.shards, events, base.transfers[:0], rows)

