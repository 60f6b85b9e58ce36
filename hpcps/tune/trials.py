"""The tuner's vocabulary: what a strategy proposes, what a backend returns, what a run records.

    Proposal      a strategy's next point, its prediction, and the strategy's own setting for it
    TrialResult   what a backend says of one trial
    TrialRecord   a finished trial as the run keeps it (state.json, trials.csv); history is a list of them
    Backend       where trials run: run_trial(), and hooks for stopping and for what a dead run left
    Stop          raised by a backend when the run cannot go on (its Slurm allocation is ending)

Nothing here runs anything; the loop (hpcps.tune.loop) wires strategies and backends together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hpcps.cluster.placement import NodeSchedule

StopRequested = Callable[[], "str | None"]
"""Says why the run has been asked to stop (e.g. "SIGTERM"), or None."""


class Stop(Exception):
    """A backend cannot go on with the run (its allocation is ending): what is finished is on disk, the
    trial it was running is not recorded and runs again on resume."""


@dataclass(frozen=True)
class Proposal:
    point: np.ndarray                            # (n_dims,) encoded schedule, before repair
    predicted_s: float | None = None
    predicted_sd: float | None = None
    note: str = ""                               # why the strategy chose it, for people (trials.csv)
    setting: Mapping[str, Any] | None = None     # the strategy's own description (JSON), back in history


@dataclass(frozen=True)
class TrialResult:
    status: str                                  # "ok", or why the trial did not give a time
    iteration_time_s: float | None = None        # mean seconds per iteration (None unless ok)
    observations: np.ndarray | None = None       # hpcps.tune.observations rows
    trace_path: str | None = None
    iteration_times_s: tuple[float, ...] = ()
    elapsed_s: float = 0.0                       # wall time the trial took
    notes: tuple[str, ...] = field(default=())
    # What the run said of its own faithfulness (hpcps.train's and hpcps.testbed's warnings: this machine
    # could not keep up with the emulated cluster): a time that may be too high, for the user to see.
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class TrialRecord:
    """One finished trial. Every field but `observations` goes to state.json as it is (to_state);
    the observations go to their own file, named by observations_file."""
    trial: int                                   # from 1
    point: np.ndarray                            # (n_dims,) the repaired point that ran
    status: str                                  # "ok" or why not
    iteration_time_s: float | None = None
    observations: np.ndarray | None = None
    predicted_s: float | None = None
    predicted_sd: float | None = None
    note: str = ""
    schedule: dict = field(default_factory=dict)
    summary: str = ""
    elapsed_s: float = 0.0
    propose_s: float = 0.0
    trace_path: str | None = None
    observations_file: str | None = None         # relative to the run's directory
    propose_cpu_s: float = 0.0                   # CPU time of the proposal (propose_s is wall time)
    incumbent: int | None = None                 # the run's best schedule after this trial (a trial number)
    incumbent_s: float = 0.0                     # wall and CPU time choosing it (structured fits its model
    incumbent_cpu_s: float = 0.0                 # there, and the next proposal reuses the fit)
    setting: dict | None = None                  # Proposal.setting
    warnings: list[str] = field(default_factory=list)   # TrialResult.warnings

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.iteration_time_s is not None

    @property
    def time_s(self) -> float:
        """The measured iteration time; inf for a trial that gave none."""
        return self.iteration_time_s if self.ok and self.iteration_time_s is not None else math.inf

    def to_state(self) -> dict[str, Any]:
        """The record as JSON values: every field but observations; non-finite numbers become null."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.name not in _KEPT_APART}

    @classmethod
    def from_state(cls, data: Mapping[str, Any], observations: np.ndarray | None = None) -> TrialRecord:
        """The record to_state() wrote (fields it lacks take their defaults), with its observations."""
        known = {f.name for f in fields(cls)} - _KEPT_APART
        values = {k: v for k, v in data.items() if k in known}
        values["point"] = np.asarray(values["point"], dtype=float)
        return cls(**values, observations=observations)


_KEPT_APART = {"observations"}


def fastest(records: Iterable[TrialRecord]) -> TrialRecord | None:
    """The record measured fastest (the first of equals); None when none gave a time."""
    return min((r for r in records if r.ok), key=lambda r: r.time_s, default=None)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class Backend:
    """Where trials run. A backend implements run_trial() and never raises for a trial that fails (out of
    memory, a crash, a timeout): it says why in the result's status. The other methods do nothing
    unless a backend has something to do there."""
    name = "?"

    def run_trial(self, trial_dir: Path, schedule: NodeSchedule, trial: int, sync: str | None = None) -> TrialResult:
        """Run schedule once; trial_dir exists and is the trial's own (outputs, logs, trace). sync: the
        synchronisation to run under (bsp, asp, sspN: hpcps.train --sync), None for the job's own; the
        loop gives it only where the run tunes it (tune --syncs)."""
        raise NotImplementedError

    def watch_stop(self, stop_requested: StopRequested) -> None:
        """stop_requested() says when the run has been asked to stop. A backend whose trials take long
        checks it while a trial runs, ends the trial and returns (a trial cut short is not recorded);
        the others finish their trial first."""

    def cancel(self) -> None:
        """End any trial still running and wait until its processes are gone (the run is ending)."""

    def end_orphans(self, trial_dir: Path) -> None:
        """Before a trial runs again in trial_dir (a run that died while it ran, now resumed): end and
        wait for whatever of the earlier attempt still runs."""
