"""Where trials run. Every backend is a hpcps.tune.trials.Backend:

    backend.run_trial(trial_dir, schedule, trial[, sync]) -> TrialResult(status, iteration_time_s, observations, ...)

(sync: the trial's synchronisation, bsp, asp or sspN, given where the run tunes it: tune --syncs.)

`sim` runs the simulator (ground truth for benchmarks), `local` runs real MPI jobs that emulate the
cluster on this machine, `testbed` runs them on a testbed of this machine (real shaped links between
network namespaces, hpcps.testbed), `slurm` runs them as Slurm job steps on the cluster itself.
A backend never raises for a trial that fails (out of memory, a crash, a timeout): it says why in status.

make_backend(name, context) builds one from the command line's context (hpcps.tune.cli.Context: the
cluster, the job, their paths, the seed, iterations, timeout, the testbed's dilation and the file in
which emulated trials share their step costs); a new backend plugs into BACKENDS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpcps.config.errors import ConfigError
from hpcps.tune.backends.common import DEFAULT_ITERATIONS
from hpcps.tune.backends.local import LocalBackend
from hpcps.tune.backends.sim import DEFAULT_ITERATIONS as SIM_ITERATIONS
from hpcps.tune.backends.sim import SimBackend
from hpcps.tune.backends.slurm import SlurmBackend
from hpcps.tune.backends.testbed import TestbedBackend
from hpcps.tune.trials import Backend, TrialResult

__all__ = ["BACKENDS", "Backend", "TrialResult", "make_backend"]


def _sim(ctx: Any) -> Backend:
    return SimBackend(ctx.cluster, ctx.job, seed=ctx.seed, iterations=ctx.iterations or SIM_ITERATIONS)


def _local(ctx: Any) -> Backend:
    return LocalBackend(ctx.cluster, ctx.job, ctx.job_path, ctx.cluster_path,
                        iterations=ctx.iterations or DEFAULT_ITERATIONS, timeout_s=ctx.timeout_s,
                        step_costs=ctx.step_costs)


def _slurm(ctx: Any) -> Backend:
    return SlurmBackend(ctx.cluster, ctx.job, ctx.job_path, ctx.cluster_path,
                        iterations=ctx.iterations or DEFAULT_ITERATIONS, timeout_s=ctx.timeout_s)


def _testbed(ctx: Any) -> Backend:
    return TestbedBackend(ctx.cluster, ctx.job, ctx.job_path, ctx.cluster_path,
                          iterations=ctx.iterations or DEFAULT_ITERATIONS, timeout_s=ctx.timeout_s,
                          dilation=ctx.dilation, step_costs=ctx.step_costs)


BACKENDS: dict[str, Callable[[Any], Backend]] = {"local": _local, "slurm": _slurm, "sim": _sim, "testbed": _testbed}


def make_backend(name: str, ctx: Any) -> Backend:
    if name not in BACKENDS:
        raise ConfigError("--backend", None, f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name](ctx)
