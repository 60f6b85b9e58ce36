"""What a tuning run leaves for people, kept up to date by observers of its events (hpcps.tune.loop):

    state.json           the record (first at every trial's end: the rest is rebuilt from it)
    trials.csv           a row per trial
    best_schedule.toml   the run's best schedule (the strategy's incumbent), as a node schedule file (with
                         its synchronisation in a leading comment where the run tunes it)
    convergence.png      measured and predicted time per trial and the best so far (at the run's end)
    progress line        one line per trial (echo)

Each report is a callable (run) or (run, record): attach_reports() subscribes the standard set.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hpcps.cluster.placement import parse_node_schedule
from hpcps.io.outputs import atomic_path
from hpcps.tune.rundir import atomic_write, write_schedule
from hpcps.tune.trials import TrialRecord

if TYPE_CHECKING:
    from hpcps.tune.loop import TuningRun

log = logging.getLogger(__name__)

CSV_COLUMNS = ("trial", "strategy", "status", "iteration_time_s", "predicted_s", "predicted_sd", "best_s",
               "best_trial", "speedup_vs_first", "n_servers", "n_workers", "schedule", "note", "elapsed_s", "propose_s",
               "warnings")


def attach_reports(run: TuningRun, echo: Callable[[str], None]) -> None:
    """The state file, trials.csv and best_schedule.toml after every trial, then the progress line; at
    the run's end trials.csv and best_schedule.toml again (a run killed between the state file and
    them is made whole) and the convergence plot."""
    run.trial_end += [save_state, write_table, write_best_schedule, ProgressLine(echo)]
    run.run_end += [write_table, write_best_schedule, plot_convergence]


def save_state(run: TuningRun, record: TrialRecord | None = None) -> None:
    run.save_state()


def write_table(run: TuningRun, record: TrialRecord | None = None) -> None:
    if run.history:
        atomic_write(run.out / "trials.csv", csv_text(run))


def write_best_schedule(run: TuningRun, record: TrialRecord | None = None) -> None:
    best = run.best()
    if best is not None:
        space = run.problem.space
        write_schedule(parse_node_schedule(best.schedule, f"trial {best.trial}"), run.out / "best_schedule.toml",
                       space.sync_of(best.point) if space.tunes_syncs else None)


def csv_text(run: TuningRun) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    first = next((r.time_s for r in run.history if r.ok), None)
    for n, r in enumerate(run.history, 1):
        inc = run.best(n)
        nodes = r.schedule.get("nodes", [])
        w.writerow([r.trial, run.settings.strategy, r.status, _fmt(r.iteration_time_s), _fmt(r.predicted_s),
                    _fmt(r.predicted_sd), _fmt(inc.time_s if inc else None), inc.trial if inc else "",
                    _fmt(first / r.time_s if (r.ok and first) else None, 4),
                    sum(1 for p in nodes if p["server"]), sum(len(p["workers"]) for p in nodes),
                    r.summary, r.note, _fmt(r.elapsed_s, 3), _fmt(r.propose_s, 3), " | ".join(r.warnings)])
    return buf.getvalue()


class ProgressLine:
    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo

    def __call__(self, run: TuningRun, rec: TrialRecord) -> None:
        self.echo(progress_line(run, rec))


def progress_line(run: TuningRun, rec: TrialRecord) -> str:
    best = run.best()
    meas = f"{rec.time_s * 1e3:.2f} ms" if rec.ok else f"FAILED ({rec.status})"
    pred = (f"{rec.predicted_s * 1e3:.2f} ms" + (f" ± {rec.predicted_sd * 1e3:.2f}" if rec.predicted_sd else "")
            if rec.predicted_s is not None else "-")
    best_s = f"{best.time_s * 1e3:.2f} ms (trial {best.trial})" if best else "-"
    nodes = rec.schedule.get("nodes", [])
    shape = f"{sum(1 for p in nodes if p['server'])} server(s), {sum(len(p['workers']) for p in nodes)} worker(s)"
    of = f"/{run.budget}" if run.budget is not None else ""
    warned = f" | {len(rec.warnings)} warning(s) that the time may be too high (trials.csv)" if rec.warnings else ""
    return (f"trial {rec.trial}{of} [{run.settings.strategy}] {shape} | measured {meas}{warned} | "
            f"predicted {pred} | best {best_s} | {rec.summary}")


def _fmt(x: float | None, digits: int = 6) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.{digits}g}"


def plot_convergence(run: TuningRun) -> None:
    """convergence.png; a failure to draw is logged, never raised (a report must not lose the run)."""
    if not run.history:
        return
    try:
        best = [b.time_s * 1e3 if (b := run.best(n)) else np.nan for n in range(1, len(run.history) + 1)]
        s = run.settings
        draw_convergence(run.history, run.out / "convergence.png", f"{s.strategy} on {s.cluster_name} ({s.backend})",
                         best)
    except Exception as e:
        log.warning("could not draw the convergence plot: %s", e)


def draw_convergence(history: list[TrialRecord], path: Path, title: str, best_ms: list[float]) -> None:
    """Measured and predicted ms per trial, and best_ms (the run's best after each trial), to path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    trials = [r.trial for r in history]
    meas = np.array([r.time_s * 1e3 if r.ok else np.nan for r in history])
    pred = np.array([r.predicted_s * 1e3 if r.predicted_s is not None else np.nan for r in history])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(trials, meas, "o", label="measured", color="C0")
    if np.isfinite(pred).any():
        ax.plot(trials, pred, "x", label="predicted", color="C1")
    ax.step(trials, best_ms, where="post", label="best so far", color="C2")
    failed = [r.trial for r in history if not r.ok]
    if failed:
        ax.plot(failed, [np.nanmax(meas) if np.isfinite(meas).any() else 1] * len(failed), "rv", label="failed")
    ax.set_xlabel("trial")
    ax.set_ylabel("iteration time (ms)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
