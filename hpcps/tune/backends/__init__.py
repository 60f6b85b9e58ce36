"""Where trials run. Every backend answers one call:

    backend.run_trial(trial_dir, schedule, trial) -> TrialResult(status, iteration_time_s, observations, ...)

`sim` runs the simulator (ground truth for benchmarks), `local` runs real MPI jobs that emulate the
cluster on this machine, `testbed` runs them on a testbed of this machine (real shaped links between
network namespaces, hpcps.testbed), `slurm` runs them as Slurm job steps on the cluster itself.
A backend never raises for a trial that fails (out of memory, a crash, a timeout): it says why in status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from hpcps.cluster.placement import NodeSchedule
from hpcps.config.errors import ConfigError


@dataclass(frozen=True)
class TrialResult:
    status: str                                  # "ok", or why the trial did not give a time
    iteration_time_s: float | None = None        # mean seconds per iteration (None unless ok)
    observations: np.ndarray | None = None       # hpcps.tune.observations rows
    trace_path: str | None = None
    iteration_times_s: tuple[float, ...] = ()
    elapsed_s: float = 0.0                       # wall time the trial took
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Backend(Protocol):
    """Optional, for backends whose trials run elsewhere (slurm):

    watch_stop(stop_requested): stop_requested() returns why the tuner is stopping (SIGTERM), or None.
        A backend that has it checks it while a trial runs, cancels the trial and returns (the loop does not
        record a trial cut short); without it the loop interrupts run_trial with an exception.
    cancel(): stop any trial still running and wait until its processes are gone.
    """
    name: str

    def run_trial(self, trial_dir: Path, schedule: NodeSchedule, trial: int) -> TrialResult:
        """Run schedule once; trial_dir exists and is the trial's own (outputs, logs, trace)."""
        ...


def _sim(ctx) -> Backend:
    from hpcps.tune.backends.sim import SimBackend
    from hpcps.tune.backends.sim import DEFAULT_ITERATIONS
    return SimBackend(ctx.cluster, ctx.job, seed=ctx.seed, iterations=ctx.iterations or DEFAULT_ITERATIONS)


def _local(ctx) -> Backend:
    from hpcps.tune.backends.local import LocalBackend
    from hpcps.tune.backends.local import DEFAULT_ITERATIONS
    return LocalBackend(ctx.cluster, ctx.job, ctx.job_path, ctx.cluster_path,
                        iterations=ctx.iterations or DEFAULT_ITERATIONS, timeout_s=ctx.timeout_s)


def _slurm(ctx) -> Backend:
    from hpcps.tune.backends.slurm import SlurmBackend
    from hpcps.tune.backends.common import DEFAULT_ITERATIONS
    return SlurmBackend(ctx.cluster, ctx.job, ctx.job_path, ctx.cluster_path,
                        iterations=ctx.iterations or DEFAULT_ITERATIONS, timeout_s=ctx.timeout_s)


def _testbed(ctx) -> Backend:
    from hpcps.tune.backends.testbed import TestbedBackend
    from hpcps.tune.backends.common import DEFAULT_ITERATIONS
    return TestbedBackend(ctx.cluster, ctx.job, ctx.job_path, ctx.cluster_path,
                          iterations=ctx.iterations or DEFAULT_ITERATIONS, timeout_s=ctx.timeout_s)


# name -> factory(context with cluster, job, job_path, cluster_path, seed). A new backend plugs in here.
BACKENDS: dict[str, Callable] = {"local": _local, "slurm": _slurm, "sim": _sim, "testbed": _testbed}


def make_backend(name: str, ctx) -> Backend:
    if name not in BACKENDS:
        raise ConfigError("--backend", None, f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name](ctx)
