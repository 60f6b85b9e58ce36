"""Two ranks over TCP: rank 1 sends a large message a moment after rank 0 posted its receive, five
times; both wait by testing and pausing (plain sleeps, or SocketWake's). Rank 0 prints the seconds from
each send's post to its receive's end.

    mpiexec -n 2 python tests/e2e/socket_wake_probe.py {wake,sleep} POLL_S
"""

import sys
import time

import numpy as np
from mpi4py import MPI

from hpcps.comm.waits import SocketWake

how, poll_s = sys.argv[1], float(sys.argv[2])
comm = MPI.COMM_WORLD
wake = SocketWake(poll_s)
buf = np.ones(2 << 20, dtype=np.float32)          # 8 MiB: past any eager limit, a rendezvous


def pause():
    if how == "wake":
        wake.pause()
    else:
        time.sleep(poll_s)


def wait(req):
    while not req.Test():
        pause()


wait(comm.Isendrecv(np.zeros(1), dest=1 - comm.rank, recvbuf=np.zeros(1), source=1 - comm.rank))  # connect
wait(comm.Ibarrier())
wake.look()                                        # the connection is open now: watch it from the start
for _ in range(5):
    if comm.rank == 0:
        wait(comm.Irecv(buf, source=1))
        done = time.monotonic()
        posted = comm.recv(source=1)
        print(f"seconds {done - posted:.4f}", flush=True)
    else:
        time.sleep(0.2)
        posted = time.monotonic()
        wait(comm.Isend(buf, dest=0))
        comm.send(posted, dest=0)
