"""A tuning run's directory (--out): its state file and its trials.

    state.json      version, settings, every finished trial (TrialRecord.to_state); written through a
                    temporary file and a rename
    trials/NNNN/    a trial's own directory; observations.json holds the observations of its record
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcps.tune import observations as obs_io
from hpcps.tune.trials import TrialRecord

STATE_VERSION = 2
STATE_FILE = "state.json"
TRIALS_DIR = "trials"


class RunDirError(Exception):
    """The directory cannot be used as asked: one line says why."""


def atomic_write(path: Path, text: str) -> None:
    """Write text to path through a temporary file in its directory and a rename: readers see the old
    file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_run_dir(out: Path) -> bool:
    return (Path(out) / STATE_FILE).is_file()


def holds_nothing_but_trials(out: Path) -> bool:
    """Whether a directory without state could become a run's: empty, or only what a run starting there
    leaves before its state file (its trials directory)."""
    return all(p.name == TRIALS_DIR for p in Path(out).iterdir())


def read_state(out: Path) -> dict[str, Any] | None:
    """The state file's content; None when there is none. RunDirError for one this version cannot read."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        return None
    with path.open() as f:
        state = json.load(f)
    if state.get("version") != STATE_VERSION:
        raise RunDirError(f"{path} has state version {state.get('version')!r}, this hpcps reads version "
                          f"{STATE_VERSION}; start a new run in another --out")
    return state


def write_state(out: Path, settings: Mapping[str, Any], records: list[TrialRecord]) -> None:
    state = {"version": STATE_VERSION, "settings": dict(settings), "trials": [r.to_state() for r in records]}
    atomic_write(Path(out) / STATE_FILE, json.dumps(state, indent=1))


def write_observations(out: Path, trial: int, observations) -> str:
    """Save a trial's observations; returns their path relative to out (TrialRecord.observations_file)."""
    rel = str(Path(TRIALS_DIR) / f"{trial:04d}" / "observations.json")
    atomic_write(Path(out) / rel, json.dumps(obs_io.to_json(observations)))
    return rel


def load_records(out: Path, state: Mapping[str, Any]) -> list[TrialRecord]:
    """The finished trials of a state, each with its observations read back."""
    records = []
    for t in state["trials"]:
        obs = None
        if t.get("observations_file"):
            with (Path(out) / t["observations_file"]).open() as f:
                obs = obs_io.from_json(json.load(f))
        records.append(TrialRecord.from_state(t, obs))
    return records


def trial_dir(out: Path, trial: int) -> Path:
    return Path(out) / TRIALS_DIR / f"{trial:04d}"
