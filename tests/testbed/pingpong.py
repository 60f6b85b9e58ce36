"""One-way latency between rank 0 and every other rank, by MPI ping-pong of a 4-byte message; prints one
JSON object {rank: {"node": ..., "one_way_s": median over rounds}} on rank 0. Waiting ranks sleep
between polls (the testbed's nodes share this machine's cores), as the parameter exchange does.

    python -m hpcps.testbed run --cluster C -n 3 -- python tests/testbed/pingpong.py [ROUNDS]
"""

import json
import socket
import sys
import time

import numpy as np
from mpi4py import MPI


def wait(req):
    while not req.Test():
        time.sleep(20e-6)


def main():
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    buf = np.zeros(1, np.float32)
    nodes = comm.gather(socket.gethostname())
    out = {}
    for peer in range(1, comm.Get_size()):
        comm.Barrier()
        times = []
        for i in range(rounds + 3):
            t0 = time.perf_counter()
            if rank == 0:
                wait(comm.Isend(buf, peer, tag=i))
                wait(comm.Irecv(buf, peer, tag=i))
            elif rank == peer:
                wait(comm.Irecv(buf, 0, tag=i))
                wait(comm.Isend(buf, 0, tag=i))
            if i >= 3:                          # the first rounds set up the connection
                times.append((time.perf_counter() - t0) / 2)
        if rank == 0:
            out[peer] = {"node": nodes[peer], "one_way_s": float(np.median(times))}
    if rank == 0:
        print(json.dumps({"nodes": nodes, "pairs": out}), flush=True)


if __name__ == "__main__":
    main()
