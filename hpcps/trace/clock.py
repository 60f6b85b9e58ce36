"""One clock for every rank: each rank's offset against rank 0, estimated by ping-pong at start-up.

Cristian's method: a rank notes its clock (t1), asks rank 0 for its clock (t_ref) and notes its clock
again when the answer arrives (t2). If the two legs take equally long, rank 0 read t_ref at the local
time (t1 + t2) / 2, so offset = (t1 + t2) / 2 - t_ref, and whatever the legs take the error is at most
(t2 - t1) / 2. Of several rounds the one with the shortest round trip is kept.

Ranks wait for their turn by polling with short sleeps instead of spinning in MPI, so that on an
oversubscribed node the two ranks at work get the cores and the round trips stay short.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from hpcps.comm.waits import sleeping_barrier, wait_sleeping

_TAG_GO, _TAG_PING, _TAG_PONG = 701, 702, 703


@dataclass(frozen=True)
class ClockEstimate:
    offset_s: float      # this rank's clock minus rank 0's
    rtt_s: float         # round trip of the best sample: |error| <= rtt_s / 2


def best_sample(t1: np.ndarray, t_ref: np.ndarray, t2: np.ndarray) -> ClockEstimate:
    """The estimate from the round with the shortest round trip. Arrays of shape (rounds,)."""
    rtt = np.asarray(t2) - np.asarray(t1)
    i = int(np.argmin(rtt))
    return ClockEstimate(float((t1[i] + t2[i]) / 2 - t_ref[i]), float(rtt[i]))


def estimate_offsets(comm, clock: Callable[[], float] = time.perf_counter, rounds: int = 12) -> ClockEstimate:
    """Collective over comm: every rank's offset against rank 0 (rank 0 gets offset 0, rtt 0)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    buf = np.zeros(1)
    if rank == 0:
        for peer in range(1, size):
            comm.Send(buf, dest=peer, tag=_TAG_GO)
            for _ in range(rounds):
                comm.Recv(buf, source=peer, tag=_TAG_PING)
                buf[0] = clock()
                comm.Send(buf, dest=peer, tag=_TAG_PONG)
        estimate = ClockEstimate(0.0, 0.0)
    else:
        wait_sleeping(comm.Irecv(buf, source=0, tag=_TAG_GO), 2e-4)
        t1, t_ref, t2 = np.zeros(rounds), np.zeros(rounds), np.zeros(rounds)
        for i in range(rounds):
            t1[i] = clock()
            comm.Send(buf, dest=0, tag=_TAG_PING)
            comm.Recv(buf, source=0, tag=_TAG_PONG)
            t2[i] = clock()
            t_ref[i] = buf[0]
        estimate = best_sample(t1, t_ref, t2)
    # Nobody leaves before the last rank is done, so the estimate is not disturbed by training traffic.
    sleeping_barrier(comm, 2e-4)
    return estimate
