"""A tuning run's directory (--out): its lock, its state file, and the fingerprint of its inputs.

    tune.lock       held (flock) by the tuner working in the directory: a second tuner is refused
    state.json      version, settings, the fingerprint of the job and cluster files, every finished trial
                    (TrialRecord.to_state); written through a temporary file and a rename
    trials/NNNN/    a trial's own directory; observations.json holds the observations of its record,
                    schedule.toml the node schedule it ran (write_schedule)
    step_costs.json what the trials of an emulated backend (local, testbed) charge a step of each batch
                    size: timed by the first trial that ran it, then charged alike by every trial
                    (hpcps.train --step-costs, hpcps/emulate/step_costs.py)

The fingerprint is the SHA-256 of each input file's bytes: a resumed run whose job or cluster file has
changed since it began would mix trials of two problems, so it is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from hpcps.io.outputs import write_text
from hpcps.tune import observations as obs_io
from hpcps.tune.trials import TrialRecord

STATE_VERSION = 2
STATE_FILE = "state.json"
LOCK_FILE = "tune.lock"
TRIALS_DIR = "trials"
STEP_COSTS_FILE = "step_costs.json"


class RunDirError(Exception):
    """The directory cannot be used as asked (in use, another run, changed inputs): one line says why."""


def atomic_write(path: Path, text: str) -> None:
    """Write text to path through a temporary file in its directory and a rename: readers see the old
    file or the new one, never a part (the project's one atomic write, hpcps.io.outputs)."""
    write_text(path, text)


class RunLock:
    """An exclusive flock on out/tune.lock for as long as the tuner works in out (released when the
    process ends, however it ends). The file says who holds it."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Raises RunDirError when another process holds the lock."""
        f = self.path.open("a+")
        self._take(f)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f

    def check_free(self) -> None:
        """RunDirError if another process holds the lock; writes nothing (nor takes the lock)."""
        try:
            f = self.path.open("r")
        except FileNotFoundError:
            return
        with f:
            self._take(f)

    def _take(self, f: IO[str]) -> None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunDirError(f"{self.path.parent} is in use by another tuning run ({holder}); wait for it to end, "
                              "or choose another --out") from None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        if self._file is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def write_schedule(schedule, path: Path, sync: str | None = None) -> None:
    """A node schedule file (hpcps.cluster.placement) at path, atomically. sync (where the run tunes
    it): the synchronisation the schedule runs under, in a leading comment, since a schedule file has no
    key for it: hpcps.train --sync takes it."""
    note = (f"# Run under sync = {sync}: python -m hpcps.train ... --sync {sync} "
            "(the job's training.sync and staleness as this schedule was measured)\n") if sync else ""
    atomic_write(Path(path), note + schedule.to_toml())


def is_run_dir(out: Path) -> bool:
    return (Path(out) / STATE_FILE).is_file()


def holds_nothing_but_trials(out: Path) -> bool:
    """Whether a directory without state could become a run's: empty, or only what a run starting there
    leaves before its state file (its lock, its trials directory)."""
    return all(p.name in (TRIALS_DIR, LOCK_FILE) for p in Path(out).iterdir())


def fingerprint(inputs: Mapping[str, Path]) -> dict[str, str]:
    """{name: "sha256:<hex>"} of each input file's bytes."""
    return {name: "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest() for name, path in inputs.items()}


def changed_inputs(recorded: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """Names of inputs whose fingerprint differs from the recorded one (a missing record counts)."""
    return [name for name in now if recorded.get(name) != now[name]]


def read_state(out: Path) -> dict[str, Any] | None:
    """The state file's content; None when there is none. RunDirError for one this version cannot read,
    or one that is damaged: --resume reads it as input, and a damaged one would otherwise end in a
    traceback, or be taken (a NaN time, a trial twice) and written back."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        return None
    try:
        with path.open() as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise _damaged(path, f"not JSON ({e})") from None
    if not isinstance(state, dict):
        raise _damaged(path, f"holds a {type(state).__name__}, not an object")
    if state.get("version") != STATE_VERSION:
        raise RunDirError(f"{path} has state version {state.get('version')!r}, this hpcps reads version "
                          f"{STATE_VERSION}; start a new run in another --out")
    for key, kind in (("settings", dict), ("inputs", dict), ("trials", list)):
        if not isinstance(state.get(key), kind):
            raise _damaged(path, f"'{key}' is {state.get(key)!r}, not {'a list' if kind is list else 'an object'}")
    for i, t in enumerate(state["trials"]):
        _check_trial_entry(path, i, t)
    return state


def _damaged(path: Path, why: str) -> RunDirError:
    return RunDirError(f"{path} is damaged: {why}; start a new run in another --out")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_trial_entry(path: Path, i: int, t: Any) -> None:
    """One entry of 'trials' as TrialRecord.to_state() writes it: trials numbered 1, 2, ... in order,
    numbers finite and not negative (null where there is none), texts text."""
    if not isinstance(t, dict):
        raise _damaged(path, f"trials[{i}] is {t!r}, not an object")
    where = f"trials[{i}]"
    if t.get("trial") != i + 1 or isinstance(t.get("trial"), bool):
        raise _damaged(path, f"{where}.trial is {t.get('trial')!r}, not {i + 1} (trials are numbered 1, 2, ... "
                             "in order)")
    point = t.get("point")
    if not isinstance(point, list) or not point or not all(_is_number(v) for v in point):
        text = repr(point)
        raise _damaged(path, f"{where}.point is {text[:60] + ' ...' if len(text) > 60 else text}, not a list of "
                             "finite numbers")
    if not isinstance(t.get("status"), str):
        raise _damaged(path, f"{where}.status is {t.get('status')!r}, not a text")
    for key in ("iteration_time_s", "predicted_s", "predicted_sd", "elapsed_s", "propose_s", "propose_cpu_s",
                "incumbent_s", "incumbent_cpu_s"):
        v = t.get(key)
        if v is not None and not (_is_number(v) and v >= 0):
            raise _damaged(path, f"{where}.{key} is {v!r}, not a finite number >= 0 (or null)")
    if t["status"] == "ok" and not (_is_number(t.get("iteration_time_s")) and t["iteration_time_s"] > 0):
        raise _damaged(path, f"{where} is ok with iteration_time_s {t.get('iteration_time_s')!r}, not a time > 0")
    for key in ("note", "summary"):
        if not isinstance(t.get(key, ""), str):
            raise _damaged(path, f"{where}.{key} is {t.get(key)!r}, not a text")
    for key in ("trace_path", "observations_file"):
        if not isinstance(t.get(key), (str, type(None))):
            raise _damaged(path, f"{where}.{key} is {t.get(key)!r}, not a path (or null)")
    rel = t.get("observations_file")
    if rel is not None and (Path(rel).is_absolute() or ".." in Path(rel).parts):
        raise _damaged(path, f"{where}.observations_file {rel!r} is not a path inside the run's directory")
    inc = t.get("incumbent")
    if inc is not None and not (isinstance(inc, int) and not isinstance(inc, bool) and 1 <= inc <= i + 1):
        raise _damaged(path, f"{where}.incumbent is {inc!r}, not a trial number up to {i + 1} (or null)")
    for key in ("schedule", "setting"):
        v = t.get(key, {})
        if not isinstance(v, (dict, type(None))):
            raise _damaged(path, f"{where}.{key} is {v!r}, not an object")


def write_state(out: Path, settings: Mapping[str, Any], inputs: Mapping[str, str],
                records: list[TrialRecord]) -> None:
    state = {"version": STATE_VERSION, "settings": dict(settings), "inputs": dict(inputs),
             "trials": [r.to_state() for r in records]}
    atomic_write(Path(out) / STATE_FILE, json.dumps(state, indent=1))


def write_observations(out: Path, trial: int, observations) -> str:
    """Save a trial's observations; returns their path relative to out (TrialRecord.observations_file)."""
    rel = str(Path(TRIALS_DIR) / f"{trial:04d}" / "observations.json")
    atomic_write(Path(out) / rel, json.dumps(obs_io.to_json(observations)))
    return rel


def load_records(out: Path, state: Mapping[str, Any]) -> list[TrialRecord]:
    """The finished trials of a state (read_state's), each with its observations read back. RunDirError
    for an observations file that is missing or damaged."""
    records = []
    for t in state["trials"]:
        obs = None
        if t.get("observations_file"):
            path = Path(out) / t["observations_file"]
            try:
                with path.open() as f:
                    obs = obs_io.from_json(json.load(f))
            except (OSError, ValueError, TypeError) as e:
                raise _damaged(path, f"trial {t['trial']}'s observations cannot be read ({e})") from None
            bad = [f for f in obs_io.TIME_FIELDS if not (np.isfinite(obs[f]) & (obs[f] >= 0)).all()]
            if bad:
                raise _damaged(path, f"trial {t['trial']}'s observations have {bad[0]} values that are not "
                                     "finite times >= 0")
        records.append(TrialRecord.from_state(t, obs))
    return records


def check_records(out: Path, records: list[TrialRecord], space) -> None:
    """RunDirError unless every record's point is one of space's repaired points (what a trial of the
    run's job and cluster ran) and every ok record's schedule is a node schedule."""
    from hpcps.cluster.placement import parse_node_schedule
    from hpcps.config import ConfigError
    from hpcps.tune.space import InfeasibleSchedule
    path = Path(out) / STATE_FILE
    for r in records:
        if r.point.shape != (space.n_dims,):
            raise _damaged(path, f"trial {r.trial}'s point has {r.point.size} values, a schedule of this job and "
                                 f"cluster {space.n_dims}")
        try:
            repaired = space.repair(r.point)
        except InfeasibleSchedule as e:
            raise _damaged(path, f"trial {r.trial}'s point is no schedule of this job and cluster ({e})") from None
        if not np.allclose(repaired, r.point, rtol=0.0, atol=1e-9):
            raise _damaged(path, f"trial {r.trial}'s point is not a schedule a trial ran (it is not repaired)")
        if r.ok:
            try:
                parse_node_schedule(r.schedule, f"trial {r.trial}")
            except ConfigError as e:
                raise _damaged(path, f"trial {r.trial}'s schedule: {e}") from None


def trial_dir(out: Path, trial: int) -> Path:
    return Path(out) / TRIALS_DIR / f"{trial:04d}"
