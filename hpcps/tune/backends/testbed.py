"""Real MPI trials on a testbed (hpcps.testbed, docs/testbed.md): each trial is

    python -m hpcps.testbed run --cluster C --dilation D --name N --schedule S --quiet -- \\
        python -m hpcps.train --job J --cluster C --schedule S --trace T.h5 --iterations K --quiet

which brings up one network namespace per node with shaped links, runs the ranks on the schedule's
nodes (as srun would place them) and takes it down again. Messages between nodes cross real links;
compute is charged as under emulation. Everything else is the local backend's: the trial's time and
observations come from the trace, a trial that fails, writes no usable trace or runs past the time
limit is recorded with its reason. Every trial gets a testbed of its own name, removed after the trial
also when the trial was killed; all trials of a run use one dilation (the testbed's default for the
cluster), so their times compare.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import NodeSchedule
from hpcps.config.errors import ConfigError
from hpcps.tune.backends.common import DEFAULT_ITERATIONS, SKIP, train_argv
from hpcps.tune.backends.local import LocalBackend
from hpcps.tune.trials import TrialResult


def trial_name(trial: int, pid: int | None = None) -> str:
    """A testbed name unique to this tuner process and trial (9 characters)."""
    return f"t{(os.getpid() if pid is None else pid) % 10000:04d}{trial % 10000:04d}"


class TestbedBackend(LocalBackend):
    name = "testbed"

    def __init__(self, cluster: Cluster, job, job_path: Path, cluster_path: Path, *,
                 iterations: int = DEFAULT_ITERATIONS, timeout_s: float = 600.0, dilation: float | None = None,
                 python: str = sys.executable, env: dict[str, str] | None = None, skip: int = SKIP,
                 check_machine: bool = True, step_costs: Path | None = None):
        """Raises ConfigError when this machine cannot build a testbed (not root, no iproute2 or iptables)."""
        from hpcps.testbed.plan import MAX_NODES, default_dilation
        from hpcps.testbed.runner import missing_requirements
        super().__init__(cluster, job, job_path, cluster_path, iterations=iterations, timeout_s=timeout_s,
                         python=python, env=env, skip=skip, step_costs=step_costs)
        if check_machine:
            why = missing_requirements(delayed=any(n.type.latency_us > 0 for n in cluster.nodes))
            if why:
                raise ConfigError("--backend", None, f"testbed: {why}")
        if len(cluster) > MAX_NODES:
            raise ConfigError(str(cluster_path), "nodes", f"a testbed holds at most {MAX_NODES} nodes; this "
                                                          f"cluster has {len(cluster)}")
        self.dilation = float(dilation) if dilation is not None else default_dilation(cluster, _profile(job))
        self._testbed = trial_name(0)

    def command(self, schedule_path: Path, trace_path: Path, n_ranks: int, sync: str | None = None) -> list[str]:
        return [self.python, "-m", "hpcps.testbed", "run", "--cluster", str(self.cluster_path),
                "--dilation", f"{self.dilation:g}", "--name", self._testbed, "--schedule", str(schedule_path),
                "--quiet", "--",
                *train_argv(self.python, self.job_path, self.cluster_path, schedule_path, trace_path, self.iterations,
                            sync, self.step_costs)]

    def run_trial(self, trial_dir: Path, schedule: NodeSchedule, trial: int, sync: str | None = None) -> TrialResult:
        from hpcps.testbed import control
        self._testbed = trial_name(trial)
        try:
            return super().run_trial(trial_dir, schedule, trial, sync)
        finally:
            # `run` takes its testbed down itself, unless it was killed first (a timeout past the grace).
            control.down(self._testbed)


def _profile(job):
    """The job's calibrated compute profile, or None for a workload without one (then the testbed's
    default dilation counts each node at one thread)."""
    from hpcps.config.errors import ConfigError
    from hpcps.sim import load_profiles, profile_for_job
    try:
        return profile_for_job(load_profiles(), job.workload, job.model, job.data)
    except ConfigError:
        return None
