"""The tuning loop, shaped after Emukit's OuterLoop: a strategy proposes, a backend runs the trial, the
run records it, and observers of each trial's end keep the reports (hpcps.tune.reports); the loop goes
on until its stopping condition holds.

    run = TuningRun(out, settings, problem, strategy, backend, inputs=fingerprint)
    run.run(budget)                  # or run.run(Budget(30) | Deadline(...)): any StoppingCondition
    run.stop_request.request("SIGTERM")          # from a signal handler: the run stops at the next check

Events (lists of callables, called in order):

    trial_end(run, record)      a trial has been recorded: the state file first, then trials.csv, the
                                best schedule and the progress line (attached by default)
    run_end(run)                run() is returning (the budget is spent, a stop, or an exception):
                                the convergence plot

A run killed at any moment resumes without losing or repeating a finished trial: the state file is
written first of all at a trial's end, and the proposal of trial i draws from a generator seeded by
(seed, i), so the resumed run proposes what the unbroken one would have. A trial that was running
when the process died has no record: it runs again on resume, after the backend has ended what is
left of it (Backend.end_orphans).

Stopping is a condition, checked between the steps of a trial: a stop requested while a proposal is
computed takes effect when it is done (nothing has run); a backend whose trials take long watches the
request (Backend.watch_stop) and ends its trial early; a trial cut short is not recorded. A backend
that cannot go on raises Stop, which stops the run the same way.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcps.cluster.placement import NodeSchedule
from hpcps.tune import rundir
from hpcps.tune.problem import Problem
from hpcps.tune.reports import attach_reports
from hpcps.tune.strategies.base import Strategy
from hpcps.tune.trials import Backend, Proposal, Stop, TrialRecord, TrialResult

log = logging.getLogger(__name__)


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
    # The push codecs the run may give workers, comma-separated, the job's own first ("": the job's
    # alone, as a run without --codecs; a state file from before codecs were tuned has none either).
    codecs: str = ""
    dilation: float | None = None        # the testbed backend's, when given
    # The synchronisations the run may choose (bsp, asp, sspN), comma-separated, the job's own first
    # ("": the job's alone, as a run without --syncs and a state file from before syncs were tuned).
    syncs: str = ""

    # What must match for --resume to continue a run (the budget may grow).
    IDENTITY = ("job", "cluster", "backend", "strategy", "seed", "iterations", "codecs", "dilation", "syncs")


def summarize(schedule: NodeSchedule, sync: str | None = None) -> str:
    """servers=a+b; workers=a:32/2,c:16/1/int8 (batch/threads, and /codec for a worker with its own);
    sync=ssp2 after them where the run tunes the synchronisation."""
    servers = "+".join(p.name for p in schedule.nodes if p.server)
    workers = ",".join(f"{p.name}:{w.batch}/{w.threads}" + (f"/{w.codec}" if w.codec else "")
                       for p in schedule.nodes for w in p.workers)
    return f"servers={servers}; workers={workers}" + (f"; sync={sync}" if sync else "")


class Event(list):
    """Callables called in order with the event's arguments (Emukit's EventHandler)."""

    def __call__(self, *args: Any) -> None:
        for fn in self:
            fn(*args)


class StoppingCondition:
    """Whether a run should stop before its next trial (Emukit's StoppingCondition, on a TuningRun)."""

    def should_stop(self, run: TuningRun) -> bool:
        raise NotImplementedError

    def __or__(self, other: StoppingCondition) -> StoppingCondition:
        return AnyOf(self, other)


class AnyOf(StoppingCondition):
    def __init__(self, *conditions: StoppingCondition):
        self.conditions = conditions

    def should_stop(self, run: TuningRun) -> bool:
        return any(c.should_stop(run) for c in self.conditions)


class Budget(StoppingCondition):
    """The run holds `trials` recorded trials (resumed ones count)."""

    def __init__(self, trials: int):
        self.trials = trials

    def should_stop(self, run: TuningRun) -> bool:
        return len(run.history) >= self.trials


class StopRequest(StoppingCondition):
    """Set from outside the loop (a signal handler, a backend raising Stop): request() only records why,
    so it is safe to call from a signal handler, more than once (the first reason stays)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, why: str) -> None:
        if self.reason is None:
            self.reason = why

    def __call__(self) -> str | None:
        return self.reason

    def should_stop(self, run: TuningRun) -> bool:
        return self.reason is not None


class TuningRun:
    """One tuning run in its directory `out`. history: the records so far (a resumed run's first);
    inputs: the fingerprint of the job and cluster files, kept in the state file; echo: where progress
    lines go. The standard reports are attached to trial_end and run_end (reports=False: none)."""

    def __init__(self, out: Path, settings: Settings, problem: Problem, strategy: Strategy, backend: Backend,
                 history: list[TrialRecord] | None = None, echo: Callable[[str], None] = print,
                 inputs: Mapping[str, str] | None = None, reports: bool = True):
        self.out = Path(out)
        self.settings = settings
        self.problem = problem
        self.strategy = strategy
        self.backend = backend
        self.history = list(history or [])
        self.inputs = dict(inputs or {})
        self.budget: int | None = None           # the trials run() was asked for, for progress lines
        self.stop_request = StopRequest()
        self.trial_end = Event()
        self.run_end = Event()
        backend.watch_stop(self.stop_request)
        if reports:
            attach_reports(self, echo)

    @property
    def stopped(self) -> str | None:
        """Why the run stopped before its budget (None: it did not)."""
        return self.stop_request.reason

    def run(self, until: int | StoppingCondition) -> str | None:
        """Trials until the condition holds (an int: until the run holds that many trials) or a stop is
        requested; returns why it stopped early, None when the condition was met."""
        condition = Budget(until) if isinstance(until, int) else until
        self.budget = until if isinstance(until, int) else None
        try:
            while not (condition | self.stop_request).should_stop(self):
                self.step()
        finally:
            self.backend.cancel()
            self.run_end(self)
        return self.stopped

    def step(self) -> TrialRecord | None:
        """Propose, run, record one trial. None when a stop came first: nothing is recorded."""
        trial = len(self.history) + 1
        rng = np.random.default_rng([self.settings.seed, trial])
        t0, c0 = time.perf_counter(), time.process_time()
        proposal = self.strategy.propose(self.history, rng)
        propose_s, propose_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        if self.stopped:
            return None
        space = self.problem.space
        point = space.repair(proposal.point)
        schedule = space.decode(point)
        sync = space.sync_of(point) if space.tunes_syncs else None
        trial_dir = rundir.trial_dir(self.out, trial)
        if trial_dir.exists():                      # left by a trial that never finished
            try:
                self.backend.end_orphans(trial_dir)
            except Stop as e:
                self.stop_request.request(str(e))
                return None
            shutil.rmtree(trial_dir)
        trial_dir.mkdir(parents=True)
        rundir.write_schedule(schedule, trial_dir / "schedule.toml", sync)
        try:
            # A run that does not tune the synchronisation calls backends as it always did.
            result = self.backend.run_trial(trial_dir, schedule, trial, **({"sync": sync} if sync else {}))
        except Stop as e:
            self.stop_request.request(str(e))
            return None
        except Exception as e:                        # a backend bug must not end the search
            log.exception("trial %d failed", trial)
            result = TrialResult(f"error: {type(e).__name__}: {e}".splitlines()[0])
        if self.stopped and not result.ok:
            return None                               # cut short by the stop: it runs again on resume
        record = self._record(trial, point, schedule, proposal, result, propose_s, propose_cpu_s, sync)
        self.trial_end(self, record)
        return record

    def _record(self, trial: int, point: np.ndarray, schedule: NodeSchedule, proposal: Proposal,
                result: TrialResult, propose_s: float, propose_cpu_s: float, sync: str | None) -> TrialRecord:
        """The trial's record, appended to history with the strategy's incumbent after it."""
        obs_file = None
        if result.observations is not None and len(result.observations):
            obs_file = rundir.write_observations(self.out, trial, result.observations)
        ok = result.ok and result.iteration_time_s is not None and np.isfinite(result.iteration_time_s)
        rec = TrialRecord(
            trial=trial, point=point, status=result.status if ok or not result.ok else "error: no time",
            iteration_time_s=result.iteration_time_s if ok else None, observations=result.observations,
            predicted_s=proposal.predicted_s, predicted_sd=proposal.predicted_sd, note=proposal.note,
            schedule=schedule.to_dict(), summary=summarize(schedule, sync), elapsed_s=result.elapsed_s,
            propose_s=propose_s, trace_path=result.trace_path, observations_file=obs_file,
            propose_cpu_s=propose_cpu_s, setting=dict(proposal.setting) if proposal.setting is not None else None,
            warnings=list(result.warnings))
        self.history.append(rec)
        t0, c0 = time.perf_counter(), time.process_time()
        inc = self.strategy.incumbent(self.history)
        rec.incumbent = inc.trial if inc is not None else None
        rec.incumbent_s, rec.incumbent_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        return rec

    def best(self, upto: int | None = None) -> TrialRecord | None:
        """The run's best schedule after trial `upto` (default: the last), as the strategy chose it."""
        hist = self.history if upto is None else self.history[:upto]
        if not hist:
            return None
        chosen = hist[-1].incumbent
        if chosen is not None and 1 <= chosen <= len(self.history) and self.history[chosen - 1].ok:
            return self.history[chosen - 1]
        ok = [r for r in hist if r.ok]
        return min(ok, key=lambda r: r.time_s) if ok else None

    def save_state(self) -> None:
        """The state file, from the settings, the inputs' fingerprint and every record."""
        rundir.write_state(self.out, asdict(self.settings), self.inputs, self.history)
