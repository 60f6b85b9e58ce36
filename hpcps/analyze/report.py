"""Text tables of an analysis (the summarize() and comparison_row() dicts of stats.py)."""

from __future__ import annotations

import math

from hpcps.analyze.stats import CATEGORIES


def _ms(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{1e3 * x:.3f}"


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x: float, fmt: str = "{:.1f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _fit_text(fit: dict) -> str:
    if fit is None or math.isnan(fit["slope_s_per_sample"]):
        return "no compute events"
    if math.isnan(fit["r2"]):
        return f"{1e3 * fit['slope_s_per_sample']:.4f} ms per sample (one batch size: no intercept)"
    return (f"compute_ms = {1e3 * fit['intercept_s']:.3f} + {1e3 * fit['slope_s_per_sample']:.4f} * k "
            f"(r2 {fit['r2']:.3f}, {len(fit['points'])} workers)")


def summary_text(s: dict) -> str:
    tp = s["throughput"]
    out = [f"trace {s['file']}", f"  run {s['run_id']}  status {s['status']}  job {s['job']} ({s['workload']})",
           f"  {s['n_ranks']} ranks, servers {s['servers']}, workers {s['workers']}, global batch {s['global_batch']}",
           f"  {tp['iterations']} iterations in {tp['wall_s']:.3f} s: {_num(tp['samples_per_s'])} samples/s overall, "
           f"{_num(tp['steady_samples_per_s'])} steady; median iteration {_ms(tp['median_iteration_s'])} ms", ""]

    out.append("Per rank: mean ms per iteration by phase (steady iterations; the phases add up to the iteration)")
    header = ["rank", "node", "type", "role", "k"] + list(CATEGORIES) + ["iter", "wait%", "samples/s"]
    rows = []
    for r in s["ranks"]:
        rows.append([str(r["rank"]), r["node_name"], r["node_type"], r["role"], str(r["batch"])]
                    + [_ms(r["breakdown_s"][c]) for c in CATEGORIES]
                    + [_ms(r["iteration_s"]), _pct(r["wait_share"]), _num(r["samples_per_s"])])
    out += [table(header, rows), ""]

    out.append("Per node type")
    rows = []
    for name, t in s["node_types"].items():
        rows.append([name, str(len(t["ranks"])), str(len(t["workers"])), ",".join(map(str, t["batches"])) or "-",
                     _pct(t["wait_share"]), _num(t["samples_per_s"]), _fit_text(t["compute_fit"])])
    out += [table(["type", "ranks", "workers", "k", "wait%", "samples/s", "compute time against batch size"], rows), ""]
    out += [f"Compute time against batch size, all workers: {_fit_text(s['compute_fit'])}", ""]

    out.append("Per server: messages timed from when both ends had posted to completion")
    rows = []
    for srv, t in s["servers_traffic"].items():
        rows.append([str(srv), f"{t['shard_bytes'] / 1e6:.3f}",
                     f"{t['pull_bytes_per_iteration'] / 1e6:.3f}", _ms(t["pull_median_s"]),
                     _num(t["pull_median_bytes_per_s"] / 1e9, "{:.3f}"),
                     f"{t['push_bytes_per_iteration'] / 1e6:.3f}", _ms(t["push_median_s"]),
                     _num(t["push_median_bytes_per_s"] / 1e9, "{:.3f}")])
    out += [table(["server", "shard MB", "pull MB/it", "pull ms", "pull GB/s", "push MB/it", "push ms", "push GB/s"],
                  rows), ""]

    h = s["hidden_communication"]
    out += [f"Communication hidden behind computation: {_pct(h['hidden_share'])} of message time "
            f"(push {_pct(h['push_hidden_share'])} of {_ms(h['push_s'])} ms, pull {_pct(h['pull_hidden_share'])} "
            f"of {_ms(h['pull_s'])} ms, summed over ranks and steady iterations)", ""]
    sg = s["straggler"]
    if sg:
        out.append(f"Straggler: rank {sg['rank']} has the longest step of the workers in {_pct(sg['share_last'])} of "
                   f"iterations, median {_ms(sg['lag_vs_median_s'])} ms longer than the median worker's and "
                   f"{_ms(sg['lag_vs_next_s'])} ms longer than the next-slowest when longest; its compute takes "
                   f"{_ms(sg['compute_s'])} ms against {_ms(sg['others_compute_s'])} ms for the others")
    else:
        out.append("Straggler: fewer than two workers")
    out.append("")
    path = s["critical_path"]
    if path:
        total = path[-1]["t_end"] - path[0]["t_start"]
        out.append(f"Critical path of iteration {s['typical_iteration']} (typical: its time is closest to the "
                   f"median), {_ms(total)} ms from first to last step")
        rows = [[str(p["rank"]), p["label"], _ms(p["t_start"] - path[0]["t_start"]), _ms(p["duration"]),
                 _pct(p["duration"] / total if total > 0 else float("nan"))] for p in path]
        out.append(table(["rank", "step", "at ms", "ms", "share"], rows))
    return "\n".join(out)


def comparison_text(rows: list[dict]) -> str:
    best = max((r["samples_per_s"] for r in rows if not math.isnan(r["samples_per_s"])), default=float("nan"))
    header = ["trace", "status", "ranks", "servers", "workers", "batch", "iters", "iter ms", "samples/s", "compute%",
              "comm%", "wait%", "straggler", "lag ms", ""]
    body = [[r["trace"], r["status"], str(r["ranks"]), str(r["servers"]), str(r["workers"]), str(r["global_batch"]),
             str(r["iterations"]), _ms(r["median_iteration_s"]), _num(r["samples_per_s"]), _pct(r["compute_share"]),
             _pct(r["comm_share"]), _pct(r["wait_share"]), "-" if r["straggler"] is None else str(r["straggler"]),
             _ms(r["straggler_lag_s"]), "best" if r["samples_per_s"] == best else ""] for r in rows]
    return ("Traces compared (shares: mean over workers of their steady iterations)\n" + table(header, body))
