"""What a tuning run is about: a cluster, a job's global batch and model size, the push codecs its workers
may use, the synchronisations the run may choose, and the search space."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from hpcps.cluster.description import Cluster
from hpcps.ps.plan import DEFAULT_BUCKET_BYTES
from hpcps.tune.space import ScheduleSpace

BYTES_PER_ELEMENT = 4


@dataclass(frozen=True)
class Problem:
    cluster: Cluster
    global_batch: int
    params: int                      # float32 elements every pull and push moves in total
    space: ScheduleSpace
    bucket_bytes: int = DEFAULT_BUCKET_BYTES     # the job's [exchange] bucket_mb: how shards are cut into pieces
    # Per codec of space.codecs: (encode, decode) seconds per value at speed 1.0, the simulator's calibration
    # (hpcps.sim MachineProfile.codec_s_per_element); empty: codecs cost no time.
    codec_costs: tuple[tuple[float, float], ...] = ()
    pull_codec: str = "none"         # the job's [exchange] pull_codec (one for every worker: not a knob)
    pull_codec_cost: tuple[float, float] = (0.0, 0.0)    # its (encode, decode) seconds per value at speed 1.0
    # The workload's calibrated thread scaling (hpcps.sim WorkloadProfile): Amdahl parallel fractions of the
    # fixed and per-sample costs, and the cost of threads past the cores. None: no calibration.
    thread_scaling: tuple[float, float, float] | None = None
    # What a user should know about these figures (a codec of the space charged nothing for want of a
    # calibrated cost), printed by the tuner before its first trial.
    notes: tuple[str, ...] = ()

    @property
    def model_bytes(self) -> float:
        return float(BYTES_PER_ELEMENT * self.params)

    @property
    def codecs(self) -> tuple[str, ...]:
        return self.space.codecs

    @property
    def syncs(self) -> tuple[str, ...]:
        """The synchronisations the run may choose (names: bsp, asp, sspN), the job's own first."""
        return self.space.syncs

    @property
    def pull_bytes(self) -> float:
        """Bytes on the wire of the whole model's values as pulls carry them (the pull codec's)."""
        return model_pull_bytes(self.params, self.bucket_bytes, self.pull_codec)

    def codec_cost(self, index: int) -> tuple[float, float]:
        """(encode, decode) seconds per value at speed 1.0 of space.codecs[index]."""
        return self.codec_costs[index] if self.codec_costs else (0.0, 0.0)

    def push_slice_bytes(self, index: int, servers: int) -> float:
        """Bytes on the wire of one worker's push to one of `servers` servers under space.codecs[index]."""
        return shard_push_bytes(self.params, self.bucket_bytes, self.codecs[index], servers)


@functools.lru_cache(maxsize=4096)
def shard_push_bytes(params: int, bucket_bytes: int, codec: str, servers: int) -> float:
    """Bytes on the wire of one worker's push of one shard when `servers` servers share the model, averaged
    over the shards: the message plan's encoded sizes (hpcps.ps.plan, hpcps.ps.codec.push_nbytes), as the
    exchange sends them."""
    from hpcps.ps.codec import push_nbytes
    from hpcps.ps.plan import MessagePlan
    plan = MessagePlan.build(params, list(range(servers)), [servers], bucket_bytes=bucket_bytes,
                             push_nbytes=push_nbytes([codec]))
    return plan.push_bytes() / servers


@functools.lru_cache(maxsize=64)
def model_pull_bytes(params: int, bucket_bytes: int, pull_codec: str) -> float:
    """Bytes on the wire of one worker's pulls of the whole model from servers elsewhere: the message
    plan's encoded sizes (hpcps.ps.codec.pull_nbytes)."""
    from hpcps.ps.codec import pull_nbytes
    from hpcps.ps.plan import MessagePlan
    plan = MessagePlan.build(params, [0], [1], bucket_bytes=bucket_bytes, pull_nbytes=pull_nbytes(pull_codec))
    return float(plan.pull_bytes())


def space_codecs(job_codec: str, allowed: Iterable[str] | None = None) -> tuple[str, ...]:
    """The codecs of a search space: the job's own first, then the other allowed ones in the order of
    hpcps.ps.codec.CODECS (so that the same set gives the same space). None: the job's codec alone."""
    from hpcps.config.schedule import CODECS
    allowed = set(allowed or ()) | {job_codec}
    return (job_codec,) + tuple(c for c in CODECS if c in allowed and c != job_codec)


def space_syncs(job_sync: str, allowed: Iterable[str] | None = None) -> tuple[str, ...]:
    """The synchronisations of a search space (names as hpcps.config.job.sync_name gives them): the job's
    own first, then the other allowed ones from the most synchronous (bsp, ssp by staleness, asp), so
    that the same set gives the same space. None: the job's alone."""
    from hpcps.config.job import parse_sync_name
    def order(name: str) -> tuple[int, int]:
        sync, staleness = parse_sync_name(name, allow_ssp0=True)
        return ("bsp", "ssp", "asp").index(sync), staleness
    others = sorted(set(allowed or ()) - {job_sync}, key=order)
    return (job_sync,) + tuple(others)


def max_batches(cluster: Cluster, global_batch: int, params: int, activation_bytes_per_sample: float,
                rank_overhead_bytes: float) -> tuple[int, ...]:
    """Per node, the largest batch its memory holds under hpcps.sim's memory model, counting one worker
    and the worst case of a server holding the whole model with every node a worker."""
    caps = []
    fixed = rank_overhead_bytes + 2 * BYTES_PER_ELEMENT * params + BYTES_PER_ELEMENT * params * (3 + len(cluster))
    for node in cluster.nodes:
        mem = node.type.memory_bytes
        if math.isinf(mem) or activation_bytes_per_sample <= 0:
            caps.append(global_batch)
        else:
            caps.append(int(max(0, min(global_batch, (mem - fixed) // activation_bytes_per_sample))))
    return tuple(caps)


def problem_for(cluster: Cluster, job, profiles=None, require_profile: bool = True,
                codecs: Iterable[str] | None = None, syncs: Iterable[str] | None = None) -> Problem:
    """The problem of tuning job on cluster, with sizes, memory and codec costs from hpcps.sim's profiles.
    codecs: the push codecs a worker may be given besides the job's own ([exchange] codec; None: that
    one alone, and no codec parameter in the space). A workload without a profile (a custom one) is a
    ConfigError unless require_profile is False: then its model is built to count parameters, memory
    sets no limit on batches, and codecs cost no time. syncs: the synchronisations the run may choose
    besides the job's own (names: bsp, asp, sspN; None: the job's alone, and no sync parameter)."""
    from hpcps.config.errors import ConfigError
    from hpcps.sim import load_profiles, profile_for_job
    gb = job.training.global_batch
    names = space_codecs(job.exchange.codec, codecs)
    modes = space_syncs(job.sync_name, syncs)
    bucket = int(job.exchange.bucket_mb * 2 ** 20)
    try:
        profiles = profiles or load_profiles()
        profile = profile_for_job(profiles, job.workload, job.model, job.data)
    except ConfigError:
        if require_profile:
            raise
        from hpcps.sim.profile import count_parameters
        params = count_parameters(job.workload, job.model, job.data)
        return Problem(cluster, gb, params, ScheduleSpace(cluster, gb, None, names, modes), bucket,
                       pull_codec=job.exchange.pull_codec)
    caps = max_batches(cluster, gb, profile.params, profile.activation_bytes_per_sample,
                       profiles.machine.rank_overhead_bytes)
    costs = tuple(profiles.machine.codec_cost(c) for c in names)
    note = profiles.machine.codec_note([*names, job.exchange.pull_codec])
    return Problem(cluster, gb, profile.params, ScheduleSpace(cluster, gb, caps, names, modes), bucket, costs,
                   job.exchange.pull_codec, profiles.machine.codec_cost(job.exchange.pull_codec),
                   (profile.fixed_parallel, profile.per_sample_parallel, profile.oversubscription),
                   (f"the simulator's compute profile {note}",) if note else ())
