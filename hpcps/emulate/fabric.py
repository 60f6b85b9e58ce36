"""A shared fluid network for the ranks of one machine, mirroring hpcps.sim's model.

Every message of the parameter exchange that crosses between two emulated nodes is a flow in a table
in shared memory (a memory-mapped file, locked with flock). A flow starts when both ends have posted
it (as large MPI messages do), moves at the max-min fair rate its source NIC's egress and destination
NIC's ingress allow given every other active flow (hpcps.sim.network.flow_rates, the simulator's own
function), and completes one latency (the larger of the two nodes') after its last byte. Both ends
wait for completion after the real MPI transfer is done, so an iteration lasts what the described
network would allow, whatever this machine's shared memory can do.

Slots: one per (phase, shard, worker) message, doubled by iteration parity: one end may run one
iteration ahead of the other on a given message, never two (it needs the message of this iteration
completed before it can post the next).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass

import numpy as np

from hpcps.sim.network import flow_rates

# Slot fields (float64).
_ITER, _POST_SRC, _POST_DST, _LEFT, _RATE, _DONE, _STATE = range(7)
_N_FIELDS = 7
_IDLE, _ACTIVE, _FINISHED = 0.0, 1.0, 2.0
_HEADER = 2                      # [0]: time the fluid state was last advanced to


def now() -> float:
    """A clock all processes of the machine share."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def emulated_clock(dilation: float):
    """The emulated clock: the shared clock slowed down by the dilation. Every rank, the training
    loop and the trace recorder alike, reads the same one."""
    d = float(dilation)
    return lambda: now() / d


@dataclass(frozen=True)
class FlowSpec:
    """One message template: which ranks, which emulated nodes, how many bytes."""
    src_rank: int
    dst_rank: int
    src_node: int
    dst_node: int
    nbytes: float


class SharedFabric:
    """The flow table for one job. Rank 0 creates the file (create()), every rank opens it (open())."""

    def __init__(self, path: str, templates: list[FlowSpec], capacity_bps: np.ndarray, latency_s: np.ndarray,
                 dilation: float, create: bool = False):
        self.path, self.templates, self.dilation = path, templates, float(dilation)
        n_nodes = len(latency_s)
        # Real-time capacities and latencies: bandwidth divided, latency multiplied by the dilation.
        self.capacity = np.concatenate([capacity_bps, capacity_bps]).astype(np.float64) / self.dilation
        self.latency = np.asarray(latency_s, dtype=np.float64) * self.dilation
        self.res_src = np.array([t.src_node for t in templates], dtype=np.int64)
        self.res_dst = np.array([n_nodes + t.dst_node for t in templates], dtype=np.int64)
        self.bytes = np.array([t.nbytes for t in templates], dtype=np.float64)
        self.flow_latency = np.array([max(self.latency[t.src_node], self.latency[t.dst_node]) for t in templates])
        size = _HEADER + 2 * len(templates) * _N_FIELDS
        if create:
            with open(path, "wb") as f:
                f.write(np.zeros(size, dtype=np.float64).tobytes())
        self._fd = os.open(path, os.O_RDWR)
        self.mem = np.memmap(path, dtype=np.float64, mode="r+", shape=(size,))
        self.slots = self.mem[_HEADER:].reshape(2 * len(templates), _N_FIELDS)
        if create:
            self.mem[0] = now()

    def close(self) -> None:
        del self.slots
        self.mem._mmap.close()
        os.close(self._fd)

    # -- called by the ranks ---------------------------------------------------------------------------

    def post(self, template: int, iteration: int, side: str) -> None:
        """This rank (side 'src' or 'dst') posted message template of iteration."""
        slot = 2 * template + iteration % 2
        with self._locked():
            t = now()
            self._advance(t)
            row = self.slots[slot]
            if row[_ITER] != iteration or row[_STATE] == _IDLE:
                row[:] = (iteration, np.nan, np.nan, 0.0, 0.0, np.nan, _IDLE)
                row[_STATE] = 0.5        # posted by one side, not yet moving
            row[_POST_SRC if side == "src" else _POST_DST] = t
            if not np.isnan(row[_POST_SRC]) and not np.isnan(row[_POST_DST]) and row[_STATE] < _ACTIVE:
                row[_LEFT], row[_STATE] = self.bytes[template], _ACTIVE
                self._rerate()

    def wait(self, template: int, iteration: int, poll_s: float = 0.002) -> None:
        """Block until message template of iteration has arrived in the emulated network."""
        slot = 2 * template + iteration % 2
        while True:
            with self._locked():
                t = now()
                self._advance(t)
                row = self.slots[slot]
                mine = row[_ITER] == iteration
                if mine and row[_STATE] == _FINISHED:
                    if row[_DONE] <= t:
                        return
                    due = row[_DONE]
                elif mine and row[_STATE] == _ACTIVE and row[_RATE] > 0:
                    due = t + row[_LEFT] / row[_RATE] + self.flow_latency[template]
                else:
                    due = t + poll_s          # the other end has not posted yet
            # Sleep to the projected arrival, but look again soon: other flows may change the rate.
            time.sleep(max(1e-4, min(poll_s, due - t)))

    def arrived(self, template: int, iteration: int) -> bool:
        """Whether message template of iteration has arrived in the emulated network."""
        slot = 2 * template + iteration % 2
        with self._locked():
            t = now()
            self._advance(t)
            row = self.slots[slot]
            return bool(row[_ITER] == iteration and row[_STATE] == _FINISHED and row[_DONE] <= t)

    def projected_done(self, template: int, iteration: int) -> float:
        """When the message is expected to arrive, on the shared clock (inf if it has not started)."""
        slot = 2 * template + iteration % 2
        with self._locked():
            t = now()
            self._advance(t)
            row = self.slots[slot]
            if row[_ITER] != iteration:
                return np.inf
            if row[_STATE] == _FINISHED:
                return float(row[_DONE])
            if row[_STATE] == _ACTIVE and row[_RATE] > 0:
                return t + row[_LEFT] / row[_RATE] + self.flow_latency[template]
            return np.inf

    # -- the fluid model -------------------------------------------------------------------------------

    def _active(self) -> np.ndarray:
        return np.flatnonzero(self.slots[:, _STATE] == _ACTIVE)

    def _rerate(self) -> None:
        act = self._active()
        if act.size:
            tmpl = act // 2
            self.slots[act, _RATE] = flow_rates(self.res_src[tmpl], self.res_dst[tmpl], self.capacity)

    def _advance(self, t: float) -> None:
        """Move every active flow forward to time t, finishing flows (and re-rating) in order."""
        last = self.mem[0]
        while True:
            act = self._active()
            if act.size == 0:
                break
            left, rate = self.slots[act, _LEFT], self.slots[act, _RATE]
            dt = left / np.maximum(rate, 1e-300)
            step = float(dt.min())
            if last + step > t:
                self.slots[act, _LEFT] = left - rate * (t - last)
                break
            last += step
            self.slots[act, _LEFT] = left - rate * step
            done = act[dt <= step * (1 + 1e-12)]
            self.slots[done, _LEFT] = 0.0
            self.slots[done, _STATE] = _FINISHED
            self.slots[done, _DONE] = last + self.flow_latency[done // 2]
            self._rerate()
        self.mem[0] = t

    class _Lock:
        def __init__(self, fd):
            self.fd = fd

        def __enter__(self):
            fcntl.flock(self.fd, fcntl.LOCK_EX)

        def __exit__(self, *exc):
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def _locked(self):
        return self._Lock(self._fd)
