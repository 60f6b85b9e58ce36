"""Step costs shared by the emulated runs of one study (`hpcps.train --step-costs FILE`).

Under "reference" compute each worker times its step alone at start-up and is charged that time
(hpcps/emulate/node.py). A run's timings are its own: on a shared 2-core machine the same step of the
same batch size was timed up to 1.9x apart between the 50 runs of one tuning sitting, so two trials of a
tuning run could differ by more than their schedules did (docs/emulation.md). With a step-costs file
the first timing of a step is kept: every later run that reads the file charges a step of that workload
and batch size the same, and times only the steps the file does not hold yet.

The file is JSON, written whole and replaced at once (never half written), under a lock so that runs
sharing it may add to it at the same time:

    {"format": "hpcps step costs", "version": 1,
     "steps": {"<workload key>": {"<batch size>": <seconds>, ...}, ...}}

A workload key names the workload and its model and data options (workload_key): the same step.
The seconds are thread CPU time of one step alone on this machine, before any node's speed, threads or
fixed cost (what the emulation then scales).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcps.config.errors import ConfigError
from hpcps.io.outputs import write_text

FORMAT = "hpcps step costs"
VERSION = 1


def workload_key(workload: str, model: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """The workload and a digest of its model and data options: steps under one key are the same work."""
    options = json.dumps({"model": dict(model), "data": dict(data)}, sort_keys=True, default=str)
    return f"{workload}:{hashlib.sha256(options.encode()).hexdigest()[:12]}"


def parse(text: str, source: str) -> dict[str, dict[int, float]]:
    """The file's steps, {key: {batch: seconds}}. Raises ConfigError naming source on anything else."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ConfigError(source, None, f"not a step-costs file (not JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(source, None, f"not a step-costs file (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise ConfigError(source, "version", f"must be {VERSION}, got {doc.get('version')!r}")
    steps = doc.get("steps")
    if not isinstance(steps, dict):
        raise ConfigError(source, "steps", f"must be a table of workloads, got {steps!r}")
    out: dict[str, dict[int, float]] = {}
    for key, table in steps.items():
        if not isinstance(table, dict):
            raise ConfigError(source, f"steps.{key}", f"must be a table of batch sizes, got {table!r}")
        costs: dict[int, float] = {}
        for batch, seconds in table.items():
            where = f"steps.{key}.{batch}"
            if not (isinstance(batch, str) and batch.isdigit() and int(batch) >= 1):
                raise ConfigError(source, where, "a batch size must be a whole number >= 1")
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                    math.isfinite(seconds) and seconds > 0):
                raise ConfigError(source, where, f"must be a finite number of seconds > 0, got {seconds!r}")
            costs[int(batch)] = float(seconds)
        out[key] = costs
    return out


def render(steps: Mapping[str, Mapping[int, float]]) -> str:
    doc = {"format": FORMAT, "version": VERSION,
           "steps": {key: {str(b): steps[key][b] for b in sorted(steps[key])} for key in sorted(steps)}}
    return json.dumps(doc, indent=1) + "\n"


def read(path: Path) -> dict[str, dict[int, float]]:
    """The steps a file holds; {} when it does not exist yet. Raises ConfigError on a file that is not
    one (or cannot be read)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(str(path), None, "is a directory, not a step-costs file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(str(path), None, f"cannot be read: {e.strerror}") from None
    return parse(text, str(path))


def add(path: Path, key: str, measured: Mapping[int, float]) -> dict[int, float]:
    """Record measured costs of workload key, keeping every cost the file already has (the first timing
    of a step stands); returns the key's costs as now recorded. The file is rewritten whole and renamed
    into place (hpcps.io.outputs), under an exclusive lock on PATH.lock, so runs adding at once lose
    nothing."""
    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        steps = read(path)
        table = steps.setdefault(key, {})
        added = False
        for batch, seconds in measured.items():
            if batch not in table:
                table[int(batch)] = float(seconds)
                added = True
        if added:
            write_text(path, render(steps), "--step-costs")
        return dict(table)
