"""hpcps.sim.simulate_job: simulate() with the job's profile (scaled to its model options), its exchange
and sync settings over the given options, and the bundled profiles unless others are given."""

from dataclasses import replace
from pathlib import Path

from hpcps.cluster import load_cluster
from hpcps.cluster.placement import naive
from hpcps.config import load_job
from hpcps.sim import SimOptions, job_options, load_profiles, profile_for_job, simulate, simulate_job

ROOT = Path(__file__).resolve().parents[2]


def setup(hidden=256):
    cluster = load_cluster(ROOT / "jobs/clusters/hetero8.toml")
    job = load_job(ROOT / "jobs/default.toml")
    job = replace(job, model={**job.model, "hidden": hidden},
                  exchange=replace(job.exchange, bucket_mb=0.01, overlap=False))
    return cluster, naive(cluster, job.training.global_batch).to_rank_schedule(), job


def by_hand(cluster, placement, job, options, profiles):
    profile = profile_for_job(profiles, job.workload, job.model, job.data)
    return simulate(cluster, placement, profile, profiles.machine, replace(options, **job_options(job)))


def test_the_jobs_scaled_profile_and_settings_with_the_bundled_profiles(monkeypatch):
    monkeypatch.delenv("HPCPS_PROFILES", raising=False)
    cluster, placement, job = setup()
    got = simulate_job(cluster, placement, job)
    assert got == by_hand(cluster, placement, job, SimOptions(), load_profiles())
    assert len(got.iteration_times_s) == SimOptions().iterations
    assert got.notes and "scaled from the calibrated options" in got.notes[0]
    # The model options count: the calibrated (smaller) model's iteration is shorter.
    assert simulate_job(cluster, placement, replace(job, model={**job.model, "hidden": 128})).iteration_time_s \
        < got.iteration_time_s


def test_given_options_and_profiles_are_used_and_the_job_decides_its_own_settings():
    cluster, placement, job = setup()
    profiles = load_profiles()
    slow = replace(profiles, machine=replace(profiles.machine, memcpy_bytes_per_s=1e9,
                                             aggregate_s_per_byte_per_worker=1e-8))
    options = SimOptions(iterations=2, bucket_mb=64.0, overlap=True, noise_sigma=0.2, seed=3)
    got = simulate_job(cluster, placement, job, options, slow)
    assert got == by_hand(cluster, placement, job, options, slow)
    assert len(got.iteration_times_s) == 2
    assert got != simulate_job(cluster, placement, job, options)          # the profiles given count
    assert got != simulate_job(cluster, placement, job, replace(options, seed=4), slow)
