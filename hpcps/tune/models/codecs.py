"""What a worker's push codec changes in an iteration, as the structured model composes it (and as the
simulator and the exchange do it):

- bytes     a worker's push to one server is as many bytes as its codec puts on the wire: the message
            plan's encoded sizes (Problem.push_slice_bytes, from hpcps.ps.plan and
            hpcps.ps.codec.push_nbytes), never recomputed here; pulls are the job's pull codec's bytes
            (Problem.pull_bytes), the same for every worker.
- encode    the worker encodes each push to another node (error feedback included) before it is sent:
            the calibrated seconds per value (hpcps.sim's machine.codec_s_per_element) times the values
            it sends, over the node's speed, added to its step. A push to its own node's server is a copy.
- decode    each server decodes every push it receives from another node before its update: the
            calibrated seconds per value times the shard's values, per such push, over its speed.
- pulls     with a lossy pull codec each server encodes its shard once per iteration (added to its
            update) and each worker decodes the whole model (added to its step), at the pull codec's
            calibrated costs, as the simulator charges them.

With the job's codec `none` alone (the default) there is nothing to model: push_bytes() is None and the
costs are zero, so the composition is the plain float32 one.
"""

from __future__ import annotations

import numpy as np

from hpcps.tune.problem import Problem
from hpcps.tune.space import DecodedBatch


class CodecModel:
    def __init__(self, problem: Problem):
        self.problem = problem
        K = len(problem.codecs)
        self.encode = np.array([problem.codec_cost(k)[0] for k in range(K)])
        self.decode = np.array([problem.codec_cost(k)[1] for k in range(K)])
        self.speed = np.array([n.type.speed for n in problem.cluster.nodes])
        self.pull_encode, self.pull_decode = problem.pull_codec_cost
        self.has_costs = bool(self.encode.any() or self.decode.any() or self.pull_encode or self.pull_decode)
        # Pushes and pulls of different sizes: iteration_times needs the push bytes given.
        self.active = self.has_costs or any(c != "none" for c in problem.codecs) or problem.pull_codec != "none"

    def push_bytes(self, d: DecodedBatch) -> np.ndarray | None:
        """(n, N) bytes of each worker's push to one server under its codec; None when every push is
        float32 (hpcps.tune.models.network.iteration_times takes either)."""
        if not self.active:
            return None
        m = np.maximum(d.servers.sum(1), 1)
        counts = np.unique(m)
        table = np.array([[self.problem.push_slice_bytes(k, int(c)) for k in range(len(self.problem.codecs))]
                          for c in counts])                               # (distinct server counts, K)
        return table[np.searchsorted(counts, m)[:, None], d.codecs]

    def remote_values(self, d: DecodedBatch) -> np.ndarray:
        """(n, N) values each worker pushes to servers on other nodes (shards of equal size)."""
        m = np.maximum(d.servers.sum(1, keepdims=True), 1)
        return np.where(d.workers, self.problem.params * (m - d.servers) / m, 0.0)

    def encode_s(self, d: DecodedBatch) -> np.ndarray:
        """(n, N) seconds each worker spends encoding its pushes to other nodes and decoding its pulls
        (0 where no worker)."""
        work = self.encode[d.codecs] * self.remote_values(d) + self.pull_decode * self.problem.params
        return np.where(d.workers, work / self.speed, 0.0)

    def decode_s(self, d: DecodedBatch) -> np.ndarray:
        """(n, N) seconds each server spends decoding the pushes of workers on other nodes and encoding
        its shard for the pulls (0 where no server)."""
        m = np.maximum(d.servers.sum(1, keepdims=True), 1)
        per_worker = np.where(d.workers, self.decode[d.codecs], 0.0)
        others = per_worker.sum(1, keepdims=True) - np.where(d.servers, per_worker, 0.0)
        return np.where(d.servers, (others + self.pull_encode) * (self.problem.params / m) / self.speed, 0.0)
