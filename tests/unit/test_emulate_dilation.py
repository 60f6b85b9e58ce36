"""The emulation's default time dilation: enough that every worker's real step here ends before its
emulated step, sped up by its node and its threads, is due."""

from pathlib import Path

from hpcps.cluster import load_cluster
from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker
from hpcps.config import load_job
from hpcps.emulate.rank import default_dilation
from hpcps.sim import compute_times, load_profiles, profile_for_job

ROOT = Path(__file__).resolve().parents[2]


def test_threads_raise_the_default_dilation_as_the_thread_model_speeds_the_step():
    cluster = load_cluster(ROOT / "jobs/clusters/hetero8.toml")
    job = load_job(ROOT / "jobs/hetero8.toml")
    profile = profile_for_job(load_profiles(), job.workload, job.model, job.data)
    fast = [n for n in cluster.nodes if n.type.speed == max(m.type.speed for m in cluster.nodes)][0]

    def placement(threads):
        return NodeSchedule((NodePlan(fast.name, True, (NodeWorker(512, threads),)),)).to_rank_schedule()

    one, many = placement(1), placement(fast.type.cores)
    assert default_dilation(cluster, one) == default_dilation(cluster, many) == 2 * fast.type.speed   # no profile
    d1, dn = default_dilation(cluster, one, profile), default_dilation(cluster, many, profile)
    assert d1 >= 2 * fast.type.speed and dn > 1.5 * d1
    real = profile.step_time(512, 1, 1, 1)
    assert dn >= 2 * real / compute_times(cluster, many, profile)[0] * 0.999999
