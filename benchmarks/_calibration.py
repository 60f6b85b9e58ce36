"""A calibration of cifar-resnet taken in the benchmark's own sitting, and the machine's speed during a run
against it: what emulation_hetero8.py and testbed_fidelity.py both compare the simulator with."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from hpcps.sim import load_profiles

ROOT = Path(__file__).resolve().parent.parent


def calibrate(out: Path) -> dict:
    """Calibrate cifar-resnet into out (benchmarks/calibrate_compute.py); its one-thread step times by batch."""
    subprocess.run([sys.executable, str(ROOT / "benchmarks/calibrate_compute.py"), "--workload", "cifar-resnet",
                    "--out", str(out)], cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    p = load_profiles(out).workload("cifar-resnet")
    return {"path": str(out), "fixed_s": p.fixed_s, "per_sample_s": p.per_sample_s,
            "step_s": {b: p.step_time(b, 1, 1, 1) for b in (1, 8, 22)}}


def machine_slowdown(profiles, run: dict) -> float:
    """How much slower this machine was during the run than at calibration: the median over the run's
    workers of the step time it charged (timed alone at start-up, `step_cost_s_by_batch`) over the
    calibrated one."""
    p = profiles.workload("cifar-resnet")
    return float(np.median([c / p.step_time(b, 1, 1, 1) for b, c in run["step_cost_s_by_batch"].items()]))


def with_speed(profiles, factor: float):
    """The profiles with every compute time multiplied by factor."""
    return replace(profiles, workloads=tuple(replace(w, fixed_s=w.fixed_s * factor,
                                                     per_sample_s=w.per_sample_s * factor)
                                             for w in profiles.workloads))
