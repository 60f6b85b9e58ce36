"""Simulated training: iteration time of a schedule on a described cluster, without MPI.

    from hpcps.sim import simulate_job
    result = simulate_job(cluster, placement, job)      # SimResult: iteration_time_s, per-rank times

See docs/sim.md for the model, its calibration and its limits.
"""

from __future__ import annotations

from hpcps.sim.engine import (RankStats, SimOptions, SimResult, Timeline, check_memory, compute_times, job_options,
                              simulate, simulate_run)
from hpcps.sim.profile import (DEFAULT_PROFILES, MachineProfile, Profiles, WorkloadProfile, load_profiles,
                               profile_for_job)


def simulate_job(cluster, placement, job, options: SimOptions | None = None,
                 profiles: Profiles | None = None) -> SimResult:
    """simulate() with the job's workload profile, optimiser, exchange settings (bucket size, overlap,
    codecs) and synchronisation (sync, staleness); profiles: the bundled ones by default."""
    from dataclasses import replace
    profiles = profiles or load_profiles()
    profile = profile_for_job(profiles, job.workload, job.model, job.data)
    options = replace(options or SimOptions(), **job_options(job))
    return simulate(cluster, placement, profile, profiles.machine, options)


__all__ = ["RankStats", "SimOptions", "SimResult", "Timeline", "check_memory", "compute_times", "job_options",
           "simulate", "simulate_job", "simulate_run",
           "DEFAULT_PROFILES", "MachineProfile", "Profiles", "WorkloadProfile", "load_profiles", "profile_for_job"]
