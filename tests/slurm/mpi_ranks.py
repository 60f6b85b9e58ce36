"""A tiny MPI program for the Slurm tests: each rank prints its rank, the world size and its Slurm node.

    python mpi_ranks.py [--hold SECONDS] [--exit-code N] [MARKER...]
"""

import argparse
import os
import sys
import time

from mpi4py import MPI

p = argparse.ArgumentParser()
p.add_argument("--hold", type=float, default=0.0, help="sleep this long after the barrier")
p.add_argument("--exit-code", type=int, default=0, help="rank 0 exits with this status")
p.add_argument("marker", nargs="*", help="ignored: lets a test find its processes")
args = p.parse_args()
comm = MPI.COMM_WORLD
print(f"rank {comm.Get_rank()}/{comm.Get_size()} on {os.environ.get('SLURMD_NODENAME', '?')}", flush=True)
comm.Barrier()
time.sleep(args.hold)
if args.exit_code and comm.Get_rank() == 0:
    print(f"rank 0: error: exiting with status {args.exit_code} as asked", file=sys.stderr, flush=True)
    sys.exit(args.exit_code)
