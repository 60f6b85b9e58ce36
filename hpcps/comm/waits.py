"""Waiting for other ranks without taking their CPU.

MPI's blocking collectives poll at full speed. Where ranks outnumber cores (one machine standing for
many nodes, a node oversubscribed), ranks spinning in a collective starve the one they wait for: at
start-up, 7 ranks spinning in a broadcast left rank 0, reading the inputs and importing PyTorch, a
quarter of a core, and an 8-rank start took minutes. These waits test a non-blocking request and sleep
between tests instead.
"""

from __future__ import annotations

import time

POLL_S = 1e-3


def wait_sleeping(req, poll_s: float = POLL_S) -> None:
    """Complete req, sleeping poll_s between tests."""
    while not req.Test():
        time.sleep(poll_s)


def sleeping_barrier(comm, poll_s: float = POLL_S) -> None:
    """A barrier over comm whose waiting ranks sleep."""
    wait_sleeping(comm.Ibarrier(), poll_s)
