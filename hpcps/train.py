"""python -m hpcps.train: one parameter-server training run under mpirun, mpiexec or srun.

    mpirun -n 16 python -m hpcps.train                       # the default job, default schedule
    mpirun -n 5 python -m hpcps.train --job jobs/digits.toml --schedule my_schedule.toml

Rank 0 reads and checks the job and schedule and tells every rank; bad input ends every rank with
status 2 and one message. Any exception during training ends the whole job (MPI_Abort).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hpcps.cli import RankAwareParser, default_job_path, fail_input
from hpcps.config import ConfigError, default_schedule, load_job, load_schedule
from hpcps.comm.buffers import TRANSPORTS

TOOL = "hpcps.train"


def build_parser(rank: int = 0) -> RankAwareParser:
    p = RankAwareParser(prog="python -m hpcps.train", rank=rank,
                        description="Train a job with parameter servers and workers on the ranks of an MPI launch.")
    p.add_argument("--job", type=Path, default=None, help="job TOML file (default: jobs/default.toml)")
    p.add_argument("--schedule", type=Path, default=None,
                   help="schedule TOML file (default: the job's [schedule], else every rank a worker with "
                        "an equal batch and one colocated server per four ranks)")
    p.add_argument("--iterations", type=int, default=None, help="train this many iterations (overrides the job)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where workers compute (default auto: a GPU when PyTorch sees one)")
    p.add_argument("--gpu-transport", choices=TRANSPORTS, default="auto",
                   help="how device buffers reach MPI: direct (CUDA-aware MPI) or staged through pinned host "
                        "memory; auto asks the MPI library (env HPCPS_GPU_TRANSPORT also overrides)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def resolve_inputs(args, n_ranks: int):
    """Load and check the job and schedule for n_ranks. Raises ConfigError on bad input."""
    job = load_job(args.job or default_job_path())
    if args.iterations is not None:
        if args.iterations <= 0:
            raise ConfigError("--iterations", None, f"must be > 0, got {args.iterations}")
        job = job.with_iterations(args.iterations)
    if args.schedule is not None:
        schedule = load_schedule(args.schedule)
    elif job.schedule is not None:
        schedule = job.schedule
    else:
        schedule = default_schedule(n_ranks, job.training.global_batch)
    schedule.check_against(n_ranks, job.training.global_batch)
    return job, schedule


def main(argv: list[str] | None = None) -> int:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    args = build_parser(rank).parse_args(argv)

    # Rank 0 alone reads the files, so every rank agrees on the outcome and exits together.
    outcome = None
    if rank == 0:
        try:
            outcome = ("ok", resolve_inputs(args, size))
        except ConfigError as e:
            outcome = ("error", str(e))
    outcome = comm.bcast(outcome, root=0)
    if outcome[0] == "error":
        fail_input(TOOL, outcome[1], rank)
    job, schedule = outcome[1]

    from hpcps.comm.abort import abort_on_error
    from hpcps.ps.runtime import run_bsp
    with abort_on_error(comm, TOOL):
        log = None if args.quiet else (lambda msg: print(msg, flush=True))
        run_bsp(comm, job, schedule, device=args.device, gpu_transport=args.gpu_transport, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
