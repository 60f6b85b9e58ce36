"""The simulator as a backend: a trial is `iterations` simulated iterations with run-to-run noise, under
the job's synchronisation (training.sync), or the trial's where the run tunes it (tune --syncs); under
ssp and asp an iteration is a global batch at the workers' own rates, hpcps.sim.SimResult.

Each iteration is simulated on its own (a one-iteration run with its own noise seed, in the steady
state: an iteration before and after it are simulated and left out, as a trace leaves out a run's
first), so that a trial gives per-rank, per-iteration observations as a trace does; the trial's time
is their mean.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import NodeSchedule
from hpcps.tune.observations import from_rank_stats
from hpcps.tune.trials import Backend, TrialResult

DEFAULT_ITERATIONS = 10
DEFAULT_NOISE = 0.05


class SimBackend(Backend):
    """A trial takes milliseconds: it is never cut short by a stop."""
    name = "sim"

    def __init__(self, cluster: Cluster, job, profiles=None, *, iterations: int = DEFAULT_ITERATIONS,
                 noise_sigma: float = DEFAULT_NOISE, seed: int = 0):
        from hpcps.sim import load_profiles, profile_for_job
        self.cluster = cluster
        self.job = job
        self.profiles = profiles or load_profiles()
        self.profile = profile_for_job(self.profiles, job.workload, job.model, job.data)
        self.iterations = iterations
        self.noise_sigma = noise_sigma
        self.seed = seed

    def run_trial(self, trial_dir: Path | None, schedule: NodeSchedule, trial: int,
                  sync: str | None = None) -> TrialResult:
        from hpcps.sim import SimOptions, simulate
        t0 = time.perf_counter()
        options = self.options(sync)
        placement = schedule.to_rank_schedule()
        times, obs = [], []
        for it in range(self.iterations):
            # Seeds from (run seed, trial, iteration): a resumed run measures what an unbroken one would.
            seed = int(np.random.SeedSequence([self.seed, trial, it]).generate_state(1)[0])
            opts = SimOptions(iterations=1, noise_sigma=self.noise_sigma, seed=seed, steady_state=True, **options)
            r = simulate(self.cluster, placement, self.profile, self.profiles.machine, opts)
            if not r.feasible:
                return TrialResult(r.status, elapsed_s=time.perf_counter() - t0)
            times.append(r.iteration_time_s)
            obs.append(from_rank_stats(self.cluster, r.ranks, iteration=it))
        return TrialResult("ok", float(np.mean(times)), np.concatenate(obs), None, tuple(times),
                           time.perf_counter() - t0)

    def options(self, sync: str | None) -> dict:
        """The job's simulation options (hpcps.sim.job_options), under sync (bsp, asp, sspN) if given."""
        from hpcps.config.job import parse_sync_name
        from hpcps.sim import job_options
        job = self.job if sync is None else self.job.with_sync(*parse_sync_name(sync, allow_ssp0=True))
        return job_options(job)

    def true_time(self, schedule: NodeSchedule, iterations: int = 3, sync: str | None = None) -> float:
        """The noise-free simulated iteration time (inf if it cannot run): what benchmarks score."""
        from hpcps.sim import SimOptions, simulate
        opts = SimOptions(iterations=iterations, steady_state=True, **self.options(sync))
        return simulate(self.cluster, schedule.to_rank_schedule(), self.profile, self.profiles.machine,
                        opts).iteration_time_s
