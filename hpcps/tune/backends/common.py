"""What the backends that run real training share: the `hpcps.train` command of a trial, the environment
of its ranks, and the trial's time and observations read from its trace. (Why a failed run failed is
hpcps.failure's.)

A real trial runs

    python -m hpcps.train --job J --cluster C --schedule S --trace TRIAL_DIR/trace.h5 --iterations K [--sync M] --quiet

(under mpiexec for the local backend, as a Slurm job step or job for the slurm backend). Its time is the
mean of the traced iterations past the first SKIP (start-up).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hpcps.cluster.description import Cluster
from hpcps.failure import failure_reason
from hpcps.tune.trials import TrialResult

__all__ = ["DEFAULT_ITERATIONS", "ROOT", "SKIP", "failure_reason", "rank_env", "read_trace", "run_warnings",
           "train_argv"]

DEFAULT_ITERATIONS = 20
SKIP = 2
ROOT = Path(__file__).resolve().parents[3]      # the project: on every rank's PYTHONPATH


def train_argv(python: str, job_path: Path, cluster_path: Path, schedule_path: Path, trace_path: Path,
               iterations: int, sync: str | None = None, step_costs: Path | None = None) -> list[str]:
    """The command line of one rank of a trial (without the launcher in front); sync (bsp, asp, sspN)
    overrides the job's synchronisation (None: the job's own, and no --sync); step_costs: the emulated
    step costs the trials share (hpcps.train --step-costs; None: each trial times its own)."""
    return [python, "-m", "hpcps.train", "--job", str(job_path), "--cluster", str(cluster_path),
            "--schedule", str(schedule_path), "--trace", str(trace_path), "--iterations", str(iterations),
            *(["--sync", sync] if sync is not None else []),
            *(["--step-costs", str(step_costs)] if step_costs is not None else []), "--quiet"]


# hpcps.train's and hpcps.testbed's own warnings (hpcps.ps.runtime._report_emulation, hpcps.testbed's run):
# the machine could not keep up with the emulated cluster, so the trial's time may be too high.
_RUN_WARNING = re.compile(r"^(hpcps\.(?:train|testbed): warning: .*\S)\s*$", re.MULTILINE)


def run_warnings(output: str) -> tuple[str, ...]:
    """The warning lines of hpcps.train and hpcps.testbed in a trial's output, each once, in order."""
    return tuple(dict.fromkeys(m.group(1) for m in _RUN_WARNING.finditer(output)))


def rank_env(base: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """base (default: this process's environment) with the project on PYTHONPATH, one OpenMP thread unless
    set, and extra on top."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def read_trace(cluster: Cluster, trace_path: Path, skip: int, t0: float) -> TrialResult:
    """The trial's result from its trace: mean time of the iterations from `skip` on (under ssp and asp,
    one global batch at the workers' own rates from `skip` on), and the observations the models learn
    from. t0 (time.perf_counter()) is when the trial began."""
    from hpcps.trace import TraceError, open_trace
    from hpcps.tune.observations import from_trace
    try:
        tr = open_trace(trace_path)
    except TraceError as e:
        return TrialResult(f"error: unusable trace: {e}", elapsed_s=time.perf_counter() - t0)
    its = tr.iterations
    its = its[its["iteration"] >= skip]
    if len(its) == 0:
        return TrialResult("error: the trace holds no iteration past start-up", trace_path=str(trace_path),
                           elapsed_s=time.perf_counter() - t0)
    times = tuple(float(x) for x in its["time_s"])
    mean_s = float(np.mean(times))
    if tr.attrs.get("sync") in ("ssp", "asp"):
        # No rounds: the iteration rows time the fastest worker's pace. One global batch takes the
        # global batch over the sum of the workers' own rates (what the simulator reports).
        from hpcps.trace.derive import own_step_rates
        batch = dict(zip(tr.ranks["rank"].tolist(), tr.ranks["batch"].tolist()))
        rate = sum(own_step_rates(tr.events, {int(w): batch[w] for w in tr.workers.tolist()}, skip).values())
        if not rate > 0:
            return TrialResult("error: the trace holds too few steps per worker past start-up",
                               trace_path=str(trace_path), elapsed_s=time.perf_counter() - t0)
        mean_s = tr.global_batch / rate
    try:
        obs = from_trace(cluster, tr, skip_iterations=skip)
    except ValueError as e:
        return TrialResult(f"error: {e}", trace_path=str(trace_path), elapsed_s=time.perf_counter() - t0)
    return TrialResult("ok", mean_s, obs, str(trace_path), times, time.perf_counter() - t0)
