"""Waiting for other ranks without taking their CPU.

MPI's blocking collectives poll at full speed. Where ranks outnumber cores (one machine standing for
many nodes, a node oversubscribed), ranks spinning in a collective starve the one they wait for: at
start-up, 7 ranks spinning in a broadcast left rank 0, reading the inputs and importing PyTorch, a
quarter of a core, and an 8-rank start took minutes. These waits test a non-blocking request and sleep
between tests instead.

A rank that sleeps between tests only moves its messages when it wakes: MPI over TCP (libfabric's tcp
provider) progresses in the rank's own calls, so a large message's handshake waits for the receiver's
next test, then the sender's, its data for the sender's calls as the socket's buffer drains, and its
end for the receiver's. SocketWake sleeps until MPI's sockets have something for it instead, so that
the network wakes the rank as an interrupt would.
"""

from __future__ import annotations

import math
import os
import select
import time
from collections.abc import Callable

POLL_S = 1e-3
FD_SETSIZE = 1024          # select() watches descriptors below it only
# What a pause watches: sockets (bytes to read) and epoll sets, which select finds ready when a
# descriptor in them is ready for what their owner asked of it. libfabric's tcp provider keeps its
# sockets in one, and asks for writability only while a message waits for room in a socket's buffer:
# a sender whose 8 MB message half fitted has nothing to read until it writes the rest.
WATCHED = ("socket:", "anon_inode:[eventpoll]")


def wait_sleeping(req, poll_s: float = POLL_S) -> None:
    """Complete req, sleeping poll_s between tests."""
    while not req.Test():
        time.sleep(poll_s)


def sleeping_barrier(comm, poll_s: float = POLL_S) -> None:
    """A barrier over comm whose waiting ranks sleep."""
    wait_sleeping(comm.Ibarrier(), poll_s)


class SocketWake:
    """Pauses between tests of MPI requests that end as soon as MPI's sockets have something for the
    rank (bytes to read; room to write where it waits for room: see WATCHED), or after poll_s (messages
    through shared memory wake nothing: the timeout finds them).

    What it watches is what was open when it last looked (/proc/self/fd, again every RESCAN_S); a
    connection MPI opens later joins its provider's epoll set, which is watched. A descriptor MPI leaves
    ready (a message it cannot take yet) would end every pause at once: after STREAK pauses in a row
    that found one ready before they began, pauses sleep poll_s plainly until one finds none, so it
    costs no more than sleeping did."""

    RESCAN_S = 0.5
    STREAK = 100

    def __init__(self, poll_s: float, clock: Callable[[], float] = time.monotonic, fd_dir: str = "/proc/self/fd"):
        self.poll_s = poll_s
        self._clock = clock
        self._fd_dir = fd_dir
        self._fds: list[int] = []
        self._looked = -math.inf
        self._streak = 0

    @property
    def watched(self) -> list[int]:
        return list(self._fds)

    def look(self) -> None:
        """Watch the sockets and epoll sets open now."""
        fds = []
        try:
            names = os.listdir(self._fd_dir)
        except OSError:              # no /proc: every pause is a plain sleep
            names = []
        for name in names:
            try:
                fd = int(name)
                if fd < FD_SETSIZE and os.readlink(os.path.join(self._fd_dir, name)).startswith(WATCHED):
                    fds.append(fd)
            except (OSError, ValueError):
                pass                 # closed meanwhile (listdir's own descriptor among them)
        self._fds = sorted(fds)
        self._looked = self._clock()

    def _ready(self, timeout_s: float) -> bool:
        try:
            ready, _, _ = select.select(self._fds, (), (), timeout_s)
        except OSError:              # a watched socket was closed: look again
            self.look()
            return False
        return bool(ready)

    def pause(self) -> None:
        if self._clock() - self._looked >= self.RESCAN_S:
            self.look()
        if self._ready(0.0):
            self._streak += 1
            if self._streak > self.STREAK:
                time.sleep(self.poll_s)
            return
        self._streak = 0
        self._ready(self.poll_s)

