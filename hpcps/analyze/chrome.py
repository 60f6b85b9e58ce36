"""Chrome trace-event JSON (what Perfetto and chrome://tracing open) from a trace, and a checker for it.

Each rank is a process. Its first lane ("phases") holds the iterations with the worker's own phases
nested inside; the second ("server") its aggregations; the third ("exchange") the pull and push windows
with their waits and local copies: an overlapped run pushes during the backward pass and aggregates
between layers, so these lanes overlap in time, each nesting within itself. One more lane per peer and
direction holds the messages, and each message is a flow arrow from its send slice to its recv slice.
Times are microseconds since the trace's time zero (integer nanoseconds / 1000, so nesting survives
the conversion exactly).
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from hpcps.trace.reader import Trace
from hpcps.trace.schema import DIRECTIONS, PHASES, TRANSFER_KINDS

_MAIN_TID, _SERVER_TID, _EXCHANGE_TID = 0, 1, 2
_LANE_OF_PHASE = {"aggregate": _SERVER_TID, "pull": _EXCHANGE_TID, "push": _EXCHANGE_TID, "wait": _EXCHANGE_TID}


def _lane(peer: int, direction: str) -> int:
    return 3 + 2 * peer + (0 if direction == "send" else 1)


def _ns(t: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(t, dtype=np.float64) * 1e9).astype(np.int64)


def to_chrome(trace: Trace, iterations: tuple[int, int] | None = None) -> dict:
    """The trace (optionally only iterations first..last, inclusive) as a Chrome trace-event document."""
    ev, tr = trace.events, trace.transfers
    if iterations is not None:
        lo, hi = iterations
        ev = ev[(ev["iteration"] >= lo) & (ev["iteration"] <= hi)]
        tr = tr[(tr["iteration"] >= lo) & (tr["iteration"] <= hi)]
    out: list[dict] = []
    lanes: dict[int, set[int]] = defaultdict(set)
    for row in trace.ranks:
        r = int(row["rank"])
        out.append({"ph": "M", "name": "process_name", "pid": r,
                    "args": {"name": f"rank {r} ({row['role']}, k={int(row['batch'])}, {row['node_name']})"}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": r, "args": {"sort_index": r}})
        for tid, lane in ((_MAIN_TID, "phases"), (_SERVER_TID, "server"), (_EXCHANGE_TID, "exchange")):
            out.append({"ph": "M", "name": "thread_name", "pid": r, "tid": tid, "args": {"name": lane}})
    s_ns, e_ns = _ns(ev["t_start"]), _ns(ev["t_end"])
    for i in range(ev.size):
        phase = PHASES[int(ev["phase"][i])]
        args = {"iteration": int(ev["iteration"][i])}
        if ev["batch"][i]:
            args["k"] = int(ev["batch"][i])
        if not np.isnan(ev["loss"][i]):
            args["loss"] = round(float(ev["loss"][i]), 6)
        name = f"iteration {int(ev['iteration'][i])}" if phase == "iteration" else phase
        out.append({"ph": "X", "cat": "phase", "name": name, "pid": int(ev["rank"][i]),
                    "tid": _LANE_OF_PHASE.get(phase, _MAIN_TID),
                    "ts": s_ns[i] / 1e3, "dur": (e_ns[i] - s_ns[i]) / 1e3, "args": args})
    ts_ns, te_ns = _ns(tr["t_start"]), _ns(tr["t_end"])
    ends: dict[tuple, list] = {}
    for i in range(tr.size):
        rank, peer = int(tr["rank"][i]), int(tr["peer"][i])
        direction, kind = DIRECTIONS[int(tr["direction"][i])], TRANSFER_KINDS[int(tr["kind"][i])]
        shard, it = int(tr["shard"][i]), int(tr["iteration"][i])
        nbytes, dur_s = int(tr["nbytes"][i]), (te_ns[i] - ts_ns[i]) / 1e9
        args = {"iteration": it, "shard": shard, "peer": peer, "bytes": nbytes,
                "waited_for_peer_us": round((ts_ns[i] - _ns(tr["t_post"][i])) / 1e3, 3)}
        if dur_s > 0:
            args["GB/s"] = round(nbytes / dur_s / 1e9, 3)
        if direction == "local":
            tid, name = _EXCHANGE_TID, f"{kind} shard {shard} (local copy)"
        else:
            tid = _lane(peer, direction)
            lanes[rank].add(tid)
            name = f"{kind} shard {shard} {'to' if direction == 'send' else 'from'} rank {peer}"
        out.append({"ph": "X", "cat": "transfer", "name": name, "pid": rank, "tid": tid, "ts": ts_ns[i] / 1e3,
                    "dur": (te_ns[i] - ts_ns[i]) / 1e3, "args": args})
        if direction != "local":
            src, dst = (rank, peer) if direction == "send" else (peer, rank)
            ends.setdefault((it, kind, shard, src, dst), [None, None])[0 if direction == "send" else 1] = (
                rank, tid, ts_ns[i] / 1e3)
    for rank, tids in lanes.items():
        for tid in sorted(tids):
            peer, recv = divmod(tid - 3, 2)
            out.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": tid,
                        "args": {"name": f"{'recv from' if recv else 'send to'} rank {peer}"}})
            out.append({"ph": "M", "name": "thread_sort_index", "pid": rank, "tid": tid, "args": {"sort_index": tid}})
    flow_id = 0
    for (it, kind, shard, src, dst), (send, recv) in sorted(ends.items()):
        if send is None or recv is None:
            continue                      # the other end was not flushed (a killed run)
        flow_id += 1
        common = {"cat": "transfer", "name": f"{kind} shard {shard}", "id": flow_id}
        out.append({"ph": "s", "pid": send[0], "tid": send[1], "ts": send[2], **common})
        out.append({"ph": "f", "bp": "e", "pid": recv[0], "tid": recv[1], "ts": recv[2], **common})
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"run_id": trace.run_id, "status": str(trace.attrs.get("status")),
                          "source": str(trace.path), "time_zero_unix_s": float(trace.attrs.get("t0_unix_s", 0.0))}}


def chrome_text(doc: dict) -> str:
    return json.dumps(doc, separators=(",", ":"))


def write_chrome(doc: dict, path) -> None:
    """Write the document to path atomically (hpcps.io.outputs)."""
    from hpcps.io.outputs import write_text
    write_text(path, chrome_text(doc))


def validate_chrome(doc: dict, tolerance_us: float = 1e-3) -> list[str]:
    """Problems with a Chrome trace document: slices that are not well nested within a lane, flows
    without both ends, flow ends that bind to no slice. An empty list means it is sound."""
    problems: list[str] = []
    events = doc.get("traceEvents")
    if not isinstance(events, list):
        return ["no traceEvents list"]
    slices: dict[tuple, list[tuple[float, float, str]]] = defaultdict(list)
    named = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    for e in events:
        if e.get("ph") == "X":
            if not all(isinstance(e.get(k), (int, float)) for k in ("ts", "dur")) or e["dur"] < 0:
                problems.append(f"bad slice times: {e}")
                continue
            slices[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"], e.get("name", "")))
            if e["pid"] not in named:
                problems.append(f"process {e['pid']} has no process_name")
                named.add(e["pid"])
    for lane, items in slices.items():
        items.sort(key=lambda x: (x[0], -x[1]))
        stack: list[tuple[float, float, str]] = []
        for start, end, name in items:
            while stack and stack[-1][1] <= start + tolerance_us:
                stack.pop()
            if stack and end > stack[-1][1] + tolerance_us:
                problems.append(f"lane {lane}: '{name}' [{start}, {end}] overlaps '{stack[-1][2]}' "
                                f"[{stack[-1][0]}, {stack[-1][1]}] without nesting")
            stack.append((start, end, name))
    flows: dict[object, dict[str, list]] = defaultdict(lambda: {"s": [], "f": []})
    for e in events:
        if e.get("ph") in ("s", "f"):
            flows[(e.get("cat"), e.get("id"))][e["ph"]].append(e)
    for fid, ends in flows.items():
        if len(ends["s"]) != 1 or len(ends["f"]) != 1:
            problems.append(f"flow {fid}: {len(ends['s'])} start(s) and {len(ends['f'])} end(s), expected 1 and 1")
            continue
        for e in ends["s"] + ends["f"]:
            lane = slices.get((e["pid"], e["tid"]), [])
            if not any(s - tolerance_us <= e["ts"] <= t + tolerance_us for s, t, _ in lane):
                problems.append(f"flow {fid}: its '{e['ph']}' end at {e['ts']} on lane {(e['pid'], e['tid'])} "
                                f"lies in no slice")
    return problems
