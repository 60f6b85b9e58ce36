"""PNG figures of a trace: a timeline of a few iterations, the per-rank breakdown, throughput over the
run, and compute time against batch size. Figures only: the numbers come from stats.py."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hpcps.analyze.stats import CATEGORIES, breakdown, compute_vs_batch, typical_iteration  # noqa: E402
from hpcps.io.outputs import write_bytes  # noqa: E402
from hpcps.trace.reader import Trace  # noqa: E402
from hpcps.trace.schema import DIRECTION, PHASE, TRANSFER_KIND  # noqa: E402

COLORS = {"data": "#8c564b", "compute": "#2ca02c", "pull": "#1f77b4", "push": "#ff7f0e", "wait": "#d3d3d3",
          "aggregate": "#9467bd", "report": "#bcbd22", "eval": "#17becf", "trace": "#e377c2", "other": "#ffffff"}


def _save(fig, path):
    """Write the figure as PNG to path (atomically) or into a binary file object; return path."""
    try:
        if isinstance(path, (str, Path)):
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
            write_bytes(path, buf.getvalue())
        else:
            fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def timeline(trace: Trace, path: Path, iterations: tuple[int, int] | None = None) -> Path:
    """One lane per rank: phases as coloured bars, waits in grey over their windows, messages as thin
    bars under the lane and arrows from sender to receiver."""
    if iterations is None:
        mid = typical_iteration(trace) or 0
        its = trace.iterations["iteration"]
        lo = max(int(its.min()) if its.size else 0, mid - 1)
        iterations = (lo, lo + 2)
    lo, hi = iterations
    ev = trace.events[(trace.events["iteration"] >= lo) & (trace.events["iteration"] <= hi)]
    tr = trace.transfers[(trace.transfers["iteration"] >= lo) & (trace.transfers["iteration"] <= hi)]
    t0 = float(ev["t_start"].min()) if ev.size else 0.0
    ranks = [int(r) for r in trace.ranks["rank"]]
    fig, ax = plt.subplots(figsize=(13, 1.0 + 0.75 * len(ranks)))
    order = ["pull", "push", "data", "compute", "aggregate", "report", "eval", "trace", "wait"]
    for lane, r in enumerate(ranks):
        y = len(ranks) - 1 - lane
        mine = ev[ev["rank"] == r]
        for phase in order:
            sel = mine[mine["phase"] == PHASE[phase]]
            if sel.size:
                ax.broken_barh(list(zip(1e3 * (sel["t_start"] - t0), 1e3 * (sel["t_end"] - sel["t_start"]))),
                               (y - 0.3, 0.5), facecolors=COLORS[phase], edgecolor="none")
        for it_ev in mine[mine["phase"] == PHASE["iteration"]]:
            ax.axvline(1e3 * (it_ev["t_start"] - t0), ymin=(y + 0.2) / len(ranks), ymax=(y + 0.8) / len(ranks),
                       color="black", linewidth=0.6)
        msgs = tr[(tr["rank"] == r) & (tr["direction"] != DIRECTION["local"])]
        for kind in ("pull", "push"):
            sel = msgs[msgs["kind"] == TRANSFER_KIND[kind]]
            if sel.size:
                ax.broken_barh(list(zip(1e3 * (sel["t_start"] - t0), 1e3 * (sel["t_end"] - sel["t_start"]))),
                               (y - 0.42, 0.09), facecolors=COLORS[kind], edgecolor="none")
    # Arrows: each message from the sender's start to the receiver's completion.
    lane_y = {r: len(ranks) - 1 - i for i, r in enumerate(ranks)}
    recv = tr[tr["direction"] == DIRECTION["recv"]]
    for m in recv:
        peer, r = int(m["peer"]), int(m["rank"])
        if peer in lane_y:
            ax.annotate("", xy=(1e3 * (m["t_end"] - t0), lane_y[r] - 0.35),
                        xytext=(1e3 * (m["t_start"] - t0), lane_y[peer] - 0.35),
                        arrowprops={"arrowstyle": "->", "color": COLORS["pull" if m["kind"] == 0 else "push"],
                                    "linewidth": 0.6, "alpha": 0.6})
    ax.set_yticks(range(len(ranks)))
    labels = [f"rank {r}\n{row['role']}, k={int(row['batch'])}" for r, row in zip(ranks, trace.ranks)]
    ax.set_yticklabels(labels[::-1], fontsize=8)
    ax.set_xlabel("ms since the first event shown")
    ax.set_title(f"{trace.run_id}: iterations {lo}-{hi} (black ticks: iteration starts; thin bars and arrows: "
                 f"messages)", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[p]) for p in order]
    ax.legend(handles, order, ncol=len(order), loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / len(ranks)),
              fontsize=8, frameon=False)
    ax.set_ylim(-0.6, len(ranks) - 0.4)
    return _save(fig, path)


def breakdown_bars(trace: Trace, path: Path) -> Path:
    b = breakdown(trace)
    ranks = sorted(b)
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(ranks), 4.5))
    bottom = np.zeros(len(ranks))
    for c in CATEGORIES:
        vals = np.array([1e3 * b[r][c] for r in ranks])
        if np.any(vals > 0):
            ax.bar(range(len(ranks)), vals, bottom=bottom, color=COLORS[c], edgecolor="black", linewidth=0.3, label=c)
            bottom += vals
    batch = trace.rank_field("batch")
    role = trace.rank_field("role")
    ax.set_xticks(range(len(ranks)))
    ax.set_xticklabels([f"rank {r}\n{role[r]}\nk={batch[r]}" for r in ranks], fontsize=8)
    ax.set_ylabel("ms per iteration (mean over steady iterations)")
    ax.set_title(f"{trace.run_id}: where each rank's iteration goes", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def throughput_over_run(trace: Trace, path: Path) -> Path:
    rows = trace.iterations
    fig, ax = plt.subplots(figsize=(10, 3.8))
    if rows.size:
        ax.plot(rows["iteration"], rows["samples_per_s"], ".", markersize=2, color="#1f77b4", alpha=0.5,
                label="per iteration")
        w = max(1, min(50, rows.size // 20))
        if rows.size >= w and w > 1:
            med = np.array([np.median(rows["samples_per_s"][max(0, i - w + 1):i + 1]) for i in range(rows.size)])
            ax.plot(rows["iteration"], med, color="black", linewidth=1.2, label=f"running median of {w}")
        flushes = np.unique(trace.phase("trace")["iteration"])
        for i, f in enumerate(flushes):
            ax.axvline(f, color=COLORS["trace"], linewidth=0.5, alpha=0.6, label="trace flush" if i == 0 else None)
        top = np.nanpercentile(rows["samples_per_s"], 99)
        ax.set_ylim(0, 1.15 * top if np.isfinite(top) and top > 0 else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("samples/s")
    ax.set_title(f"{trace.run_id}: throughput over the run", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def compute_scatter(trace: Trace, path: Path) -> Path:
    types = trace.rank_field("node_type")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    fit = compute_vs_batch(trace)
    ks = np.array([k for k, _ in fit.points])
    comp = trace.phase("compute")
    for i, name in enumerate(sorted(set(types.values()))):
        ranks = [r for r, t in types.items() if t == name]
        sel = comp[np.isin(comp["rank"], ranks)]
        ax.plot(sel["batch"], 1e3 * (sel["t_end"] - sel["t_start"]), ".", alpha=0.15, markersize=3,
                color=f"C{i}", label=f"{name}: events")
    if ks.size:
        ax.plot(ks, [1e3 * t for _, t in fit.points], "o", color="black", label="median per worker")
        xs = np.linspace(0, ks.max() * 1.05, 50)
        ax.plot(xs, 1e3 * fit.predict(xs), "-", color="black", linewidth=1,
                label=f"fit: {1e3 * fit.intercept_s:.3f} + {1e3 * fit.slope_s_per_sample:.4f} k ms")
        hi = np.percentile(1e3 * (comp["t_end"] - comp["t_start"]), 99)
        ax.set_ylim(0, 1.2 * max(hi, 1e3 * max(t for _, t in fit.points)))
    ax.set_xlabel("batch size k (samples)")
    ax.set_ylabel("compute ms (forward + backward)")
    ax.set_title(f"{trace.run_id}: compute time against batch size", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


FIGURES = ("timeline", "breakdown", "throughput", "compute_vs_batch")


def render_all(trace: Trace, iterations: tuple[int, int] | None = None) -> dict[str, bytes]:
    """{file name: PNG bytes} of every figure, in memory: a command writes them only once all rendered."""
    out = {}
    for name, draw in zip(FIGURES, (lambda p: timeline(trace, p, iterations), lambda p: breakdown_bars(trace, p),
                                    lambda p: throughput_over_run(trace, p), lambda p: compute_scatter(trace, p))):
        buf = io.BytesIO()
        draw(buf)
        out[f"{name}.png"] = buf.getvalue()
    return out


def write_all(trace: Trace, directory: Path, iterations: tuple[int, int] | None = None) -> list[Path]:
    """Render every figure, then write each into directory (atomically)."""
    pngs = render_all(trace, iterations)
    for name, data in pngs.items():
        write_bytes(directory / name, data)
    return [directory / name for name in pngs]
