"""The tuning loop, ask/tell: a strategy proposes, a backend runs the trial, the result is recorded, and
the whole state is on disk after every trial, so a run killed at any moment resumes without losing or
repeating a finished trial.

    run = TuningRun.create(out, settings, problem, strategy, backend)      # or TuningRun.resume(...)
    run.run(budget)

`--out` holds

    state.json                    settings and every finished trial (written through a temporary file
                                  and a rename, last of all for each trial)
    trials/NNNN/                  a trial's own directory: observations.json (and a trace, for real runs)
    trials.csv                    a row per trial
    best_schedule.toml            the run's best schedule (the fastest measured; for structured, of those
                                  measured within noise of the fastest, the one its model predicts
                                  fastest), as a node schedule file
    convergence.png               measured and predicted time per trial, and the best so far

A trial that was running when the process died has no entry in state.json: it runs again on resume.
The proposal of trial i draws from a generator seeded by (seed, i), so the resumed run proposes what the
unbroken one would have.

Stopping (SIGTERM from scancel or a job's time limit, Ctrl-C): the signal handler calls request_stop().
While a proposal is computed, or a trial runs on a backend that cannot be told to stop, it raises Stop at
once (the backend ends its trial as it unwinds). A backend with watch_stop() (slurm) is told instead: it
cancels its trial and returns. A trial cut short is never recorded; recording and saving a finished trial
is never interrupted; the loop then raises Stop before the next trial.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hpcps.cluster.placement import NodeSchedule, parse_node_schedule, write_node_schedule
from hpcps.tune import observations as obs_io
from hpcps.tune.problem import Problem
from hpcps.tune.strategies import Strategy, TrialRecord

log = logging.getLogger(__name__)

STATE_VERSION = 1
CSV_COLUMNS = ("trial", "strategy", "status", "iteration_time_s", "predicted_s", "predicted_sd", "best_s",
               "best_trial", "speedup_vs_first", "n_servers", "n_workers", "schedule", "note", "elapsed_s", "propose_s")
STOP_AFTER_ENV = "HPCPS_TUNE_STOP_AFTER"      # test hook: exit hard right after persisting trial k


class Stop(Exception):
    """Asked to stop (SIGTERM, SIGINT): what is finished is on disk."""


@dataclass(frozen=True)
class Settings:
    job: str
    cluster: str
    backend: str
    strategy: str
    seed: int
    budget: int
    iterations: int | None = None
    cluster_name: str = ""
    global_batch: int = 0

    # What must match for --resume to continue a run (the budget may grow).
    IDENTITY = ("job", "cluster", "backend", "strategy", "seed", "iterations")


def atomic_write(path: Path, text: str) -> None:
    from hpcps.io.outputs import write_text      # the project's one atomic write
    write_text(path, text)


def summarize(schedule: NodeSchedule) -> str:
    """servers=a+b; workers=a:32/2,c:16/1 (batch/threads)."""
    servers = "+".join(p.name for p in schedule.nodes if p.server)
    workers = ",".join(f"{p.name}:{w.batch}/{w.threads}" for p in schedule.nodes for w in p.workers)
    return f"servers={servers}; workers={workers}"


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


class TuningRun:
    def __init__(self, out: Path, settings: Settings, problem: Problem, strategy: Strategy, backend,
                 history: list[TrialRecord] | None = None, echo=print):
        self.out = Path(out)
        self.settings = settings
        self.problem = problem
        self.strategy = strategy
        self.backend = backend
        self.history = history or []
        self.echo = echo
        self.stop_reason: str | None = None     # set by request_stop()
        self._interruptible = False
        self._cooperative = callable(getattr(backend, "watch_stop", None))
        if self._cooperative:
            backend.watch_stop(lambda: self.stop_reason)

    # -- stopping -----------------------------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        """Ask the run to stop (safe to call from a signal handler, more than once): what is finished
        stays on disk, a trial cut short is not recorded."""
        if self.stop_reason is None:
            self.stop_reason = why
        if self._interruptible:
            self._interruptible = False
            raise Stop(self.stop_reason)

    def _check_stop(self) -> None:
        if self.stop_reason is not None:
            raise Stop(self.stop_reason)

    def _interruptible_call(self, fn, *args):
        """fn(*args), during which request_stop() raises Stop at once."""
        self._check_stop()
        self._interruptible = True
        try:
            return fn(*args)
        finally:
            self._interruptible = False

    # -- creating and resuming ----------------------------------------------------------------------

    @staticmethod
    def read_state(out: Path) -> dict | None:
        path = Path(out) / "state.json"
        if not path.is_file():
            return None
        with path.open() as f:
            return json.load(f)

    @classmethod
    def load_history(cls, out: Path, state: dict, space) -> list[TrialRecord]:
        history = []
        for t in state["trials"]:
            obs = None
            if t.get("observations"):
                with (Path(out) / t["observations"]).open() as f:
                    obs = obs_io.from_json(json.load(f))
            history.append(TrialRecord(
                trial=t["trial"], point=np.array(t["point"], dtype=float), status=t["status"],
                iteration_time_s=t.get("iteration_time_s"), observations=obs,
                predicted_s=t.get("predicted_s"), predicted_sd=t.get("predicted_sd"), note=t.get("note", ""),
                schedule=t.get("schedule", {}), summary=t.get("summary", ""), elapsed_s=t.get("elapsed_s", 0.0),
                propose_s=t.get("propose_s", 0.0), trace_path=t.get("trace_path"),
                observations_file=t.get("observations"), propose_cpu_s=t.get("propose_cpu_s", 0.0),
                incumbent=t.get("incumbent"), incumbent_s=t.get("incumbent_s", 0.0),
                incumbent_cpu_s=t.get("incumbent_cpu_s", 0.0)))
        return history

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, budget: int) -> None:
        stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
        try:
            while len(self.history) < budget:
                rec = self.step()
                self.echo(self.progress_line(rec, budget))
                if stop_after and rec.trial == stop_after:
                    os._exit(137)
        finally:
            self.write_reports(plot=True)

    def step(self) -> TrialRecord:
        """Ask, run, tell: one trial, persisted."""
        trial = len(self.history) + 1
        rng = np.random.default_rng([self.settings.seed, trial])
        self._check_stop()
        t0, c0 = time.perf_counter(), time.process_time()
        proposal = self._interruptible_call(self.strategy.propose, self.history, rng)
        propose_s = time.perf_counter() - t0
        propose_cpu_s = time.process_time() - c0
        point = self.problem.space.repair(proposal.point)
        schedule = self.problem.space.decode(point)
        trial_dir = self.out / "trials" / f"{trial:04d}"
        if trial_dir.exists():                      # left by a trial that never finished
            shutil.rmtree(trial_dir)
        trial_dir.mkdir(parents=True)
        write_node_schedule(schedule, trial_dir / "schedule.toml")
        try:
            if self._cooperative:
                self._check_stop()
                result = self.backend.run_trial(trial_dir, schedule, trial)
            else:
                result = self._interruptible_call(self.backend.run_trial, trial_dir, schedule, trial)
        except Stop:
            raise
        except Exception as e:                        # a backend bug must not end the search
            log.exception("trial %d failed", trial)
            from hpcps.tune.backends import TrialResult
            result = TrialResult(f"error: {type(e).__name__}: {e}".splitlines()[0])
        if self.stop_reason is not None and not result.ok:
            raise Stop(self.stop_reason)              # cut short by the stop: it runs again on resume
        obs_rel = None
        if result.observations is not None and len(result.observations):
            obs_rel = str(Path("trials") / f"{trial:04d}" / "observations.json")
            atomic_write(self.out / obs_rel, json.dumps(obs_io.to_json(result.observations)))
        ok = result.ok and result.iteration_time_s is not None and math.isfinite(result.iteration_time_s)
        rec = TrialRecord(trial, point, result.status if ok or result.status != "ok" else "error: no time",
                          result.iteration_time_s if ok else None, result.observations, proposal.predicted_s,
                          proposal.predicted_sd, proposal.note, schedule.to_dict(), summarize(schedule),
                          result.elapsed_s, propose_s, result.trace_path, obs_rel, propose_cpu_s)
        self.history.append(rec)
        t0, c0 = time.perf_counter(), time.process_time()
        inc = self.strategy.incumbent(self.history)
        rec.incumbent = inc.trial if inc is not None else None
        rec.incumbent_s, rec.incumbent_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        self.save_state()
        self.write_reports(plot=False)
        return rec

    # -- persistence --------------------------------------------------------------------------------

    def save_state(self) -> None:
        trials = []
        for r in self.history:
            obs_rel = r.observations_file
            trials.append({"trial": r.trial, "status": r.status, "iteration_time_s": _num(r.iteration_time_s),
                           "predicted_s": _num(r.predicted_s), "predicted_sd": _num(r.predicted_sd),
                           "note": r.note, "summary": r.summary, "schedule": r.schedule,
                           "point": [float(x) for x in r.point], "elapsed_s": r.elapsed_s,
                           "propose_s": r.propose_s, "propose_cpu_s": r.propose_cpu_s, "trace_path": r.trace_path,
                           "observations": obs_rel, "incumbent": r.incumbent, "incumbent_s": r.incumbent_s,
                           "incumbent_cpu_s": r.incumbent_cpu_s})
        state = {"version": STATE_VERSION, "settings": asdict(self.settings), "trials": trials}
        atomic_write(self.out / "state.json", json.dumps(state, indent=1))

    def best(self, upto: int | None = None) -> TrialRecord | None:
        """The run's best schedule after trial `upto` (default: the last), as the strategy chose it."""
        hist = self.history if upto is None else self.history[:upto]
        if not hist:
            return None
        chosen = hist[-1].incumbent
        if chosen is not None and 1 <= chosen <= len(self.history) and self.history[chosen - 1].ok:
            return self.history[chosen - 1]
        ok = [r for r in hist if r.ok]
        return min(ok, key=lambda r: r.iteration_time_s) if ok else None

    def write_reports(self, plot: bool) -> None:
        if not self.history:
            return
        atomic_write(self.out / "trials.csv", self.csv_text())
        best = self.best()
        if best is not None:
            sched = parse_node_schedule(best.schedule, f"trial {best.trial}")
            write_node_schedule(sched, self.out / "best_schedule.toml")
        if plot:
            try:
                incs = [self.best(n) for n in range(1, len(self.history) + 1)]
                plot_convergence(self.history, self.out / "convergence.png",
                                 f"{self.settings.strategy} on {self.settings.cluster_name} ({self.settings.backend})",
                                 [i.iteration_time_s * 1e3 if i else np.nan for i in incs])
            except Exception as e:                    # a report must not lose the run
                log.warning("could not draw the convergence plot: %s", e)

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        first = next((r.iteration_time_s for r in self.history if r.ok), None)
        for n, r in enumerate(self.history, 1):
            inc = self.best(n)
            nodes = r.schedule.get("nodes", [])
            w.writerow([r.trial, self.settings.strategy, r.status, _fmt(r.iteration_time_s), _fmt(r.predicted_s),
                        _fmt(r.predicted_sd), _fmt(inc.iteration_time_s if inc else None), inc.trial if inc else "",
                        _fmt(first / r.iteration_time_s if (r.ok and first) else None, 4),
                        sum(1 for p in nodes if p["server"]), sum(len(p["workers"]) for p in nodes),
                        r.summary, r.note, _fmt(r.elapsed_s, 3), _fmt(r.propose_s, 3)])
        return buf.getvalue()

    def progress_line(self, rec: TrialRecord, budget: int) -> str:
        best = self.best()
        meas = f"{rec.iteration_time_s * 1e3:.2f} ms" if rec.ok else f"FAILED ({rec.status})"
        pred = (f"{rec.predicted_s * 1e3:.2f} ms" + (f" ± {rec.predicted_sd * 1e3:.2f}" if rec.predicted_sd else "")
                if rec.predicted_s is not None else "-")
        best_s = f"{best.iteration_time_s * 1e3:.2f} ms (trial {best.trial})" if best else "-"
        nodes = rec.schedule.get("nodes", [])
        shape = f"{sum(1 for p in nodes if p['server'])} server(s), {sum(len(p['workers']) for p in nodes)} worker(s)"
        return (f"trial {rec.trial}/{budget} [{self.settings.strategy}] {shape} | measured {meas} | "
                f"predicted {pred} | best {best_s} | {rec.summary}")


def _fmt(x, digits: int = 6):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.{digits}g}"


def plot_convergence(history: list[TrialRecord], path: Path, title: str, best: list[float] | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    trials = [r.trial for r in history]
    meas = [r.iteration_time_s * 1e3 if r.ok else np.nan for r in history]
    pred = [r.predicted_s * 1e3 if r.predicted_s is not None else np.nan for r in history]
    best = np.fmin.accumulate(np.array(meas, dtype=float)) if best is None else np.array(best, dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(trials, meas, "o", label="measured", color="C0")
    if np.isfinite(pred).any():
        ax.plot(trials, pred, "x", label="predicted", color="C1")
    ax.step(trials, best, where="post", label="best so far", color="C2")
    failed = [r.trial for r in history if not r.ok]
    if failed:
        ax.plot(failed, [np.nanmax(meas) if np.isfinite(meas).any() else 1] * len(failed), "rv", label="failed")
    ax.set_xlabel("trial")
    ax.set_ylabel("iteration time (ms)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    from hpcps.io.outputs import atomic_path
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)


