"""The analysis of a trace, as plain numbers: pure functions of a Trace's arrays, no I/O, no plotting.

Conventions: durations in seconds; "per iteration" figures are medians over the steady iterations
(steady_iterations: the first iterations, which include start-up and warm-up, are left out); shares
are fractions of the rank's summed iteration time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from hpcps.trace.derive import own_step_rates
from hpcps.trace.reader import Trace
from hpcps.trace.schema import DIRECTION, PHASE, TRANSFER_KIND

# The exclusive breakdown of a rank's iteration: every second of it lands in exactly one category.
CATEGORIES = ("data", "compute", "pull", "push", "wait", "aggregate", "report", "eval", "trace", "other")
CATEGORY_MEANINGS = {
    "pull": "pull window minus its wait: moving parameters and the exchange's own work",
    "push": "push window minus its wait: moving gradients and the exchange's own work",
    "wait": "waiting at the barrier for the last peer (inside pull and push windows)",
    "other": "the rest of the iteration: the training loop's own Python work",
}


def steady_iterations(trace: Trace) -> np.ndarray:
    """Iteration numbers to use for typical figures: all but the first few (at least one, at most 10%)."""
    its = np.unique(trace.phase("iteration")["iteration"])
    skip = min(max(1, its.size // 10), 20) if its.size > 2 else 0
    return its[skip:]


def _in(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    return np.isin(values, allowed)


def _key(rank, iteration) -> np.ndarray:
    return (np.asarray(iteration, np.int64) << 32) | np.asarray(rank, np.int64)


def _window_of_waits(trace: Trace) -> np.ndarray:
    """For each wait event: True if it lies in a pull window (else in a push window)."""
    waits, pulls = trace.phase("wait"), trace.phase("pull")
    pk = _key(pulls["rank"], pulls["iteration"])
    order = np.argsort(pk)
    pk, pstart, pend = pk[order], pulls["t_start"][order], pulls["t_end"][order]
    wk = _key(waits["rank"], waits["iteration"])
    i = np.clip(np.searchsorted(pk, wk), 0, max(pk.size - 1, 0))
    if pk.size == 0:
        return np.zeros(waits.size, bool)
    return (pk[i] == wk) & (waits["t_start"] >= pstart[i] - 1e-12) & (waits["t_end"] <= pend[i] + 1e-12)


def breakdown(trace: Trace, iterations: np.ndarray | None = None) -> dict[int, dict[str, float]]:
    """{rank: {category: mean seconds per iteration}} over the given iterations (default: steady ones).

    The categories add up to the rank's mean iteration time.
    """
    its = steady_iterations(trace) if iterations is None else np.asarray(iterations)
    ev = trace.events[_in(trace.events["iteration"], its)]
    dur = ev["t_end"] - ev["t_start"]
    in_pull = np.zeros(ev.size, bool)
    waits_mask = ev["phase"] == PHASE["wait"]
    if waits_mask.any():
        all_waits = _window_of_waits(trace)
        in_pull[waits_mask] = all_waits[_in(trace.phase("wait")["iteration"], its)]
    out = {}
    for rank in trace.ranks["rank"]:
        mine = ev["rank"] == rank
        n = max(int(np.sum(mine & (ev["phase"] == PHASE["iteration"]))), 1)

        def total(phase: str, extra=None) -> float:
            m = mine & (ev["phase"] == PHASE[phase])
            if extra is not None:
                m &= extra
            return float(dur[m].sum())
        wait_pull, wait_push = total("wait", in_pull), total("wait", ~in_pull)
        row = {c: total(c) for c in ("data", "compute", "aggregate", "report", "eval", "trace")}
        row["pull"] = total("pull") - wait_pull
        row["push"] = total("push") - wait_push
        row["wait"] = wait_pull + wait_push
        row["other"] = total("iteration") - sum(row.values())
        out[int(rank)] = {c: row[c] / n for c in CATEGORIES}
    return out


@dataclass
class LinearFit:
    """compute_s = intercept_s + slope_s_per_sample * k, least squares over (k, median time) points."""
    slope_s_per_sample: float
    intercept_s: float
    r2: float
    points: list[tuple[int, float]] = field(default_factory=list)   # (k, median compute seconds) per worker

    def predict(self, k) -> np.ndarray:
        return self.intercept_s + self.slope_s_per_sample * np.asarray(k, dtype=float)


def fit_line(k: np.ndarray, t: np.ndarray) -> LinearFit:
    """Least-squares line through (k, t). With a single distinct k the line goes through the origin."""
    k, t = np.asarray(k, float), np.asarray(t, float)
    points = [(int(a), float(b)) for a, b in zip(k, t)]
    if k.size == 0:
        return LinearFit(float("nan"), float("nan"), float("nan"), points)
    if np.unique(k).size < 2:
        slope = float(np.sum(k * t) / np.sum(k * k))
        return LinearFit(slope, 0.0, float("nan"), points)
    slope, intercept = np.polyfit(k, t, 1)
    pred = intercept + slope * k
    ss_res, ss_tot = float(np.sum((t - pred) ** 2)), float(np.sum((t - t.mean()) ** 2))
    return LinearFit(float(slope), float(intercept), 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, points)


def compute_vs_batch(trace: Trace, ranks: np.ndarray | None = None) -> LinearFit:
    """Compute time against batch size: one point per worker (its median compute time and its k)."""
    comp = trace.phase("compute")
    comp = comp[_in(comp["iteration"], steady_iterations(trace))]
    workers = np.unique(comp["rank"]) if ranks is None else np.intersect1d(np.unique(comp["rank"]), ranks)
    ks, ts = [], []
    for w in workers:
        mine = comp[comp["rank"] == w]
        ks.append(int(np.median(mine["batch"])))
        ts.append(float(np.median(mine["t_end"] - mine["t_start"])))
    return fit_line(np.array(ks), np.array(ts))


def server_traffic(trace: Trace) -> dict[int, dict[str, float]]:
    """Per server rank: bytes per iteration through it and the median time and bandwidth of its messages.

    A pull message is timed at the worker that receives it, a push message at the server that receives
    it, each from when both ends had posted (t_start) to completion (t_end). Local copies (a server
    that is also a worker) are left out: they are not communication.
    """
    its = steady_iterations(trace)
    tr = trace.transfers[_in(trace.transfers["iteration"], its)]
    recv = tr[tr["direction"] == DIRECTION["recv"]]
    out = {}
    for s in trace.servers:
        row: dict[str, float] = {"shard_bytes": float(trace.shards["nbytes"][trace.shards["server"] == s].sum())}
        for kind, at_server in (("pull", False), ("push", True)):
            if at_server:
                m = recv[(recv["kind"] == TRANSFER_KIND[kind]) & (recv["rank"] == s)]
            else:
                m = recv[(recv["kind"] == TRANSFER_KIND[kind]) & (recv["peer"] == s)]
            d = m["t_end"] - m["t_start"]
            n_it = max(np.unique(m["iteration"]).size, 1)
            row[f"{kind}_messages_per_iteration"] = m.size / n_it
            row[f"{kind}_bytes_per_iteration"] = float(m["nbytes"].sum()) / n_it
            row[f"{kind}_median_s"] = float(np.median(d)) if d.size else float("nan")
            ok = d > 0
            row[f"{kind}_median_bytes_per_s"] = float(np.median(m["nbytes"][ok] / d[ok])) if ok.any() else float("nan")
        out[int(s)] = row
    return out


def wait_share(trace: Trace, iterations: np.ndarray | None = None) -> dict[int, float]:
    b = breakdown(trace, iterations)
    return {r: (row["wait"] / total if (total := sum(row.values())) > 0 else float("nan")) for r, row in b.items()}


@dataclass
class Straggler:
    rank: int                 # the worker whose step most often takes longest
    share_last: float         # fraction of steady iterations in which it was last
    lag_vs_median_s: float    # median over iterations: its step time minus the median worker's
    lag_vs_next_s: float      # median over iterations where it was last: lead over the second-to-last
    compute_s: float          # its median compute time
    others_compute_s: float   # the other workers' median compute time


def straggler(trace: Trace) -> Straggler | None:
    """Which worker holds up the others: the one whose own step (forward and backward, the time its
    layers waited for parameters excluded) takes longest most often. With overlap, pushes start during
    the backward pass, and a worker's compute may end late only because its parameters came late, so
    neither the push window's start nor the compute's end says who is slow."""
    done = trace.phase("compute")
    workers = trace.workers
    done = done[_in(done["iteration"], steady_iterations(trace)) & _in(done["rank"], workers)]
    if workers.size < 2 or done.size == 0:
        return None
    its = np.unique(done["iteration"])
    col = {int(w): i for i, w in enumerate(workers)}
    ready = np.full((its.size, workers.size), np.nan)
    ready[np.searchsorted(its, done["iteration"]), [col[int(r)] for r in done["rank"]]] = done["t_end"] - done["t_start"]
    ready = ready[~np.isnan(ready).any(axis=1)]
    if ready.shape[0] == 0:
        return None
    last = np.argmax(ready, axis=1)
    counts = np.bincount(last, minlength=workers.size)
    j = int(np.argmax(counts))
    lag_median = np.median(ready[:, j] - np.median(ready, axis=1))
    rows = ready[last == j]
    second = np.sort(rows, axis=1)[:, -2]
    comp = trace.phase("compute")
    comp = comp[_in(comp["iteration"], steady_iterations(trace))]
    d = comp["t_end"] - comp["t_start"]
    mine = comp["rank"] == workers[j]
    return Straggler(int(workers[j]), float(counts[j] / ready.shape[0]), float(lag_median),
                     float(np.median(rows[:, j] - second)), float(np.median(d[mine])) if mine.any() else float("nan"),
                     float(np.median(d[~mine])) if (~mine).any() else float("nan"))


def stale_mode(trace: Trace) -> bool:
    """True for an ssp or asp run: its workers step at their own rates, not in rounds."""
    return trace.attrs.get("sync") in ("ssp", "asp")


def worker_rates(trace: Trace) -> dict[int, float]:
    """Samples per second of each worker at its own rate over the steady iterations (own_step_rates)."""
    steady = steady_iterations(trace)
    batch = dict(zip(trace.ranks["rank"].tolist(), trace.ranks["batch"].tolist()))
    return own_step_rates(trace.events, {int(w): batch[w] for w in trace.workers.tolist()},
                          int(steady[0]) if steady.size else 0)


def throughput(trace: Trace) -> dict[str, float]:
    """Iterations, samples per second over the whole run and in the steady part, the median time of an
    iteration (one global batch) and the run's wall time.

    Under ssp and asp an iteration number is not a round: a fast worker starts iteration i long before
    a slow one, so the gaps between the first starts of consecutive iterations are the fastest worker's
    steps and would overstate the rate by as much as the workers differ. There the steady rate is the
    sum of each worker's own rate (worker_rates), and the time of one global batch the global batch
    over that sum: what the simulator reports for these modes."""
    rows = trace.iterations
    steady = rows[_in(rows["iteration"], steady_iterations(trace))]
    total_t = float(rows["time_s"].sum())
    if stale_mode(trace):
        rate = float(sum(worker_rates(trace).values())) if trace.workers.size else float("nan")
        steady_rate = rate if rate > 0 else float("nan")
        median_s = trace.global_batch / steady_rate if steady_rate > 0 else float("nan")
    else:
        steady_rate = float(steady["samples"].sum() / steady["time_s"].sum()) if steady.size else float("nan")
        median_s = float(np.median(steady["time_s"])) if steady.size else float("nan")
    return {
        "iterations": int(rows.size),
        "samples_per_s": float(rows["samples"].sum() / total_t) if total_t > 0 else float("nan"),
        "steady_samples_per_s": steady_rate,
        "median_iteration_s": median_s,
        "wall_s": total_t,
    }


def typical_iteration(trace: Trace) -> int | None:
    """A steady iteration whose time is closest to the median, avoiding ones with a report, eval, flush or
    checkpoint."""
    rows = trace.iterations[_in(trace.iterations["iteration"], steady_iterations(trace))]
    if rows.size == 0:
        rows = trace.iterations
    if rows.size == 0:
        return None
    busy = trace.events[_in(trace.events["phase"], [PHASE["report"], PHASE["eval"], PHASE["trace"],
                                                    PHASE["checkpoint"]])]
    quiet = rows[~_in(rows["iteration"], busy["iteration"])]
    pool = quiet if quiet.size else rows
    med = np.median(rows["time_s"])
    return int(pool["iteration"][np.argmin(np.abs(pool["time_s"] - med))])


@dataclass
class Segment:
    rank: int
    label: str       # e.g. "compute", "pull shard 0 from rank 3", "overhead"
    category: str    # one of CATEGORIES (transfers count as pull or push)
    t_start: float
    t_end: float

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start


def critical_path(trace: Trace, iteration: int | None = None) -> list[Segment]:
    """The chain of activities that ended the iteration, in time order.

    Start at the aggregation that ends last (the next pull waits for it; in a partial trace without
    one, the last push) and walk back: an activity's predecessor is the one before it on the same
    rank, except that a message that could only start when its peer posted (t_start later than our
    own post) hands the walk to the peer at that moment. Gaps between activities on a rank are the
    loop's overhead. The walk stops at the start of the iteration on the rank it has reached.
    """
    it = typical_iteration(trace) if iteration is None else iteration
    if it is None:
        return []
    ev = trace.events[trace.events["iteration"] == it]
    tr = trace.transfers[trace.transfers["iteration"] == it]
    acts = ev[_in(ev["phase"], [PHASE[p] for p in ("pull", "data", "compute", "push", "aggregate")])]
    if acts.size == 0:
        return []
    starts = {int(r): float(ev["t_start"][(ev["rank"] == r) & (ev["phase"] == PHASE["iteration"])].min())
              for r in np.unique(ev["rank"]) if np.any((ev["rank"] == r) & (ev["phase"] == PHASE["iteration"]))}
    # The iteration ends with the last server's step: the next pull waits for it. A worker may notice
    # that its push completed even later, but nothing waits for that.
    enders = acts[acts["phase"] == PHASE["aggregate"]]
    if enders.size == 0:
        enders = acts[acts["phase"] == PHASE["push"]]
    last = enders[np.argmax(enders["t_end"])]
    rank, t = int(last["rank"]), float(last["t_end"])
    path: list[Segment] = []
    names = {v: k for k, v in PHASE.items()}
    eps = 1e-9
    for _ in range(10_000):
        floor = starts.get(rank, -np.inf)
        if t <= floor + eps:
            break
        mine = acts[(acts["rank"] == rank) & (acts["t_start"] < t - eps)]
        if mine.size == 0:
            path.append(Segment(rank, "overhead", "other", floor, t))
            break
        a = mine[np.argmax(mine["t_start"])]
        a_end = min(float(a["t_end"]), t)
        if a_end < t - eps:
            path.append(Segment(rank, "overhead", "other", a_end, t))
        phase = names[int(a["phase"])]
        if phase not in ("pull", "push"):
            label = f"{phase} (k={int(a['batch'])})" if phase in ("compute", "data") else phase
            path.append(Segment(rank, label, phase, float(a["t_start"]), a_end))
            rank, t = rank, float(a["t_start"])
            continue
        kind = TRANSFER_KIND[phase]
        window = tr[(tr["rank"] == rank) & (tr["kind"] == kind) & (tr["t_end"] <= a_end + eps)]
        if window.size == 0:
            path.append(Segment(rank, f"{phase} window", phase, float(a["t_start"]), a_end))
            rank, t = rank, float(a["t_start"])
            continue
        x = window[np.argmax(window["t_end"])]
        if float(x["t_end"]) < a_end - eps:
            path.append(Segment(rank, f"{phase} (exchange overhead)", phase, float(x["t_end"]), a_end))
        d = {v: k for k, v in DIRECTION.items()}[int(x["direction"])]
        peer = int(x["peer"])
        what = {"recv": f"from rank {peer}", "send": f"to rank {peer}", "local": "local copy"}[d]
        path.append(Segment(rank, f"{phase} shard {int(x['shard'])} {what}", phase, float(x["t_start"]),
                            float(x["t_end"])))
        if d != "local" and float(x["t_start"]) > float(x["t_post"]) + eps:
            # The peer posted last: the walk continues on the peer, just before its post.
            rank, t = peer, float(x["t_start"])
        else:
            if float(x["t_start"]) > float(a["t_start"]) + eps:
                path.append(Segment(rank, f"{phase} (posting)", phase, float(a["t_start"]), float(x["t_start"])))
            rank, t = rank, float(a["t_start"])
    path.reverse()
    return [s for s in path if s.duration > 0]


def node_types(trace: Trace) -> dict[str, dict]:
    """Per node type: its ranks, workers, batch sizes, compute line, wait share and samples/s."""
    types = trace.rank_field("node_type")
    shares = wait_share(trace)
    tp = throughput(trace)
    own = worker_rates(trace) if stale_mode(trace) else {}
    out = {}
    for name in sorted(set(types.values())):
        ranks = np.array(sorted(r for r, t in types.items() if t == name))
        workers = np.intersect1d(ranks, trace.workers)
        k = trace.ranks["batch"][_in(trace.ranks["rank"], workers)]
        fit = compute_vs_batch(trace, workers)
        it_s = tp["median_iteration_s"]
        out[name] = {"ranks": ranks.tolist(), "workers": workers.tolist(), "batches": k.tolist(),
                     "compute_fit": asdict(fit),
                     "wait_share": float(np.mean([shares[int(r)] for r in ranks])) if ranks.size else float("nan"),
                     "samples_per_s": float(sum(own[int(w)] for w in workers)) if own
                     else float(k.sum() / it_s) if it_s > 0 else float("nan")}
    return out


def _union(intervals: np.ndarray) -> np.ndarray:
    """Disjoint, sorted intervals covering the (n, 2) intervals given."""
    if intervals.size == 0:
        return intervals.reshape(0, 2)
    iv = intervals[np.argsort(intervals[:, 0])]
    out = [list(iv[0])]
    for a, b in iv[1:]:
        if a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return np.array(out)


def _covered(intervals: np.ndarray, cover: np.ndarray) -> float:
    """Total length of disjoint intervals that lies inside the disjoint intervals cover."""
    total = 0.0
    for a, b in intervals:
        lo, hi = np.maximum(cover[:, 0], a), np.minimum(cover[:, 1], b)
        total += float(np.clip(hi - lo, 0, None).sum())
    return total


def hidden_communication(trace: Trace, iterations: np.ndarray | None = None) -> dict[str, float]:
    """The share of message time that a rank spent computing at the same time, over steady iterations.

    Per rank, the time its push (or pull) messages were in flight is the union of their intervals from
    post to completion (copies of a rank serving itself excluded); the hidden part is what lies inside
    the rank's own compute phases. Returns shares for push, pull and both, summed over ranks, and the
    seconds behind them: 0 when a run overlaps nothing, 1 when every message moved while its rank computed.
    """
    its = steady_iterations(trace) if iterations is None else iterations
    t = trace.transfers
    t = t[_in(t["iteration"], its) & (t["direction"] != DIRECTION["local"])]
    comp = trace.phase("compute")
    comp = comp[_in(comp["iteration"], its)]
    out: dict[str, float] = {}
    totals = {"push": [0.0, 0.0], "pull": [0.0, 0.0]}
    for r in np.unique(t["rank"]):
        cover = _union(np.column_stack([comp["t_start"], comp["t_end"]])[comp["rank"] == r])
        for kind in ("push", "pull"):
            mine = t[(t["rank"] == r) & (t["kind"] == TRANSFER_KIND[kind])]
            busy = _union(np.column_stack([mine["t_post"], mine["t_end"]]))
            if busy.size:
                totals[kind][0] += float((busy[:, 1] - busy[:, 0]).sum())
                totals[kind][1] += _covered(busy, cover) if cover.size else 0.0
    for kind, (busy_s, hidden_s) in totals.items():
        out[f"{kind}_s"], out[f"{kind}_hidden_s"] = busy_s, hidden_s
        out[f"{kind}_hidden_share"] = hidden_s / busy_s if busy_s > 0 else float("nan")
    busy = totals["push"][0] + totals["pull"][0]
    out["hidden_share"] = (totals["push"][1] + totals["pull"][1]) / busy if busy > 0 else float("nan")
    return out


def staleness(trace: Trace) -> dict:
    """How stale the parameters of each worker's steps were (ssp and asp runs; see the trace schema's
    staleness dataset): per worker, over its steps and pieces, the count of rows, mean, median, 90th
    percentile, maximum and {staleness: share of rows}. Under bsp every step is 0 by construction."""
    sync = trace.attrs.get("sync", "bsp")
    sync = sync if isinstance(sync, str) and sync in ("bsp", "ssp", "asp") else "unknown"
    bound = trace.attrs.get("staleness")
    bound = int(bound) if sync == "ssp" and isinstance(bound, (int, np.integer)) and not isinstance(bound, bool) else None
    out = {"sync": sync, "bound": bound, "workers": {}}
    rows = trace.staleness
    for w in np.unique(rows["rank"]):
        v = rows["staleness"][rows["rank"] == w]
        values, counts = np.unique(v, return_counts=True)
        out["workers"][int(w)] = {"rows": int(v.size), "steps": int(np.unique(rows["iteration"][rows["rank"] == w]).size),
                                  "mean": float(v.mean()), "median": float(np.median(v)),
                                  "p90": float(np.percentile(v, 90)), "max": int(v.max()),
                                  "histogram": {int(a): float(c / v.size) for a, c in zip(values, counts)}}
    return out


def summarize(trace: Trace) -> dict:
    """Everything the text report shows, as a JSON-ready dict."""
    sg = straggler(trace)
    it = typical_iteration(trace)
    tp = throughput(trace)
    b = breakdown(trace)
    own = worker_rates(trace) if stale_mode(trace) else {}
    ranks = []
    for row in trace.ranks:
        r = int(row["rank"])
        total = sum(b[r].values())
        ranks.append({"rank": r, "host": row["host"], "node_name": row["node_name"], "node_type": row["node_type"],
                      "role": row["role"], "device": row["device"], "threads": int(row["threads"]),
                      "batch": int(row["batch"]), "iteration_s": total, "breakdown_s": b[r],
                      "wait_share": b[r]["wait"] / total if total > 0 else float("nan"),
                      "samples_per_s": own.get(r, 0.0) if own else int(row["batch"]) / tp["median_iteration_s"]
                      if tp["median_iteration_s"] > 0 else float("nan"),
                      "clock_offset_s": float(row["clock_offset_s"]), "clock_rtt_s": float(row["clock_rtt_s"])})
    return {
        "file": str(trace.path), "run_id": trace.run_id, "status": trace.attrs.get("status"),
        "job": trace.attrs.get("job_name"), "workload": trace.attrs.get("workload"), "n_ranks": trace.n_ranks,
        "servers": trace.servers.tolist(), "workers": trace.workers.tolist(), "global_batch": trace.global_batch,
        "throughput": tp, "ranks": ranks, "node_types": node_types(trace),
        "compute_fit": asdict(compute_vs_batch(trace)), "servers_traffic": server_traffic(trace),
        "straggler": asdict(sg) if sg else None, "typical_iteration": it,
        "hidden_communication": hidden_communication(trace), "staleness": staleness(trace),
        "critical_path": [asdict(s) | {"duration": s.duration} for s in critical_path(trace, it)],
    }


def comparison_row(trace: Trace) -> dict:
    """One line of the table that compares traces (the trials of a tuning run)."""
    tp = throughput(trace)
    b = breakdown(trace)
    workers = trace.workers
    tot = {c: float(np.mean([b[int(r)][c] for r in workers])) for c in CATEGORIES} if workers.size else {}
    it_s = sum(tot.values()) if tot else float("nan")
    if not it_s > 0:            # a run stopped before its first iteration: no time to share out
        tot = {}
    sg = straggler(trace)
    return {"trace": str(trace.path), "run_id": trace.run_id, "status": trace.attrs.get("status"),
            "ranks": trace.n_ranks, "servers": int(trace.servers.size), "workers": int(workers.size),
            "global_batch": trace.global_batch, "iterations": tp["iterations"],
            "median_iteration_s": tp["median_iteration_s"], "samples_per_s": tp["steady_samples_per_s"],
            "compute_share": (tot["data"] + tot["compute"]) / it_s if tot else float("nan"),
            "comm_share": (tot["pull"] + tot["push"]) / it_s if tot else float("nan"),
            "wait_share": tot["wait"] / it_s if tot else float("nan"),
            "straggler": sg.rank if sg else None, "straggler_lag_s": sg.lag_vs_median_s if sg else float("nan")}
