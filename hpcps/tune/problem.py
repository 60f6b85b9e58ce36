"""What a tuning run is about: a cluster, a job's global batch and model size, and the search space."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpcps.cluster.description import Cluster
from hpcps.tune.space import ScheduleSpace

BYTES_PER_ELEMENT = 4


@dataclass(frozen=True)
class Problem:
    cluster: Cluster
    global_batch: int
    params: int                      # float32 elements every pull and push moves in total
    space: ScheduleSpace

    @property
    def model_bytes(self) -> float:
        return float(BYTES_PER_ELEMENT * self.params)


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


def problem_for(cluster: Cluster, job, profiles=None, require_profile: bool = True) -> Problem:
    """The problem of tuning job on cluster, with sizes and memory from hpcps.sim's profiles. A workload
    without a profile (a custom one) is a ConfigError unless require_profile is False: then its model is
    built to count parameters, and memory sets no limit on batches."""
    from hpcps.config.errors import ConfigError
    from hpcps.sim import load_profiles, profile_for_job
    gb = job.training.global_batch
    try:
        profiles = profiles or load_profiles()
        profile = profile_for_job(profiles, job.workload, job.model, job.data)
    except ConfigError:
        if require_profile:
            raise
        from hpcps.sim.profile import count_parameters
        params = count_parameters(job.workload, job.model, job.data)
        return Problem(cluster, gb, params, ScheduleSpace(cluster, gb, None))
    caps = max_batches(cluster, gb, profile.params, profile.activation_bytes_per_sample,
                       profiles.machine.rank_overhead_bytes)
    return Problem(cluster, gb, profile.params, ScheduleSpace(cluster, gb, caps))
