"""python -m hpcps.train: one parameter-server training run under mpirun, mpiexec or srun.

    mpirun -n 16 python -m hpcps.train                       # the default job, default schedule
    mpirun -n 5 python -m hpcps.train --job jobs/digits.toml --schedule my_schedule.toml

Rank 0 reads and checks the job and schedule and tells every rank; bad input ends every rank with
status 2 and one message. Any exception during training ends the whole job (MPI_Abort).
Every run writes a trace (docs/trace.md) unless --no-trace is given.
"""

from __future__ import annotations

import json
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
    p.add_argument("--cluster", type=Path, default=None,
                   help="cluster TOML file the ranks stand for (recorded in the trace)")
    p.add_argument("--trace", type=Path, default=None,
                   help="HDF5 trace file to write (default: results/runs/<run-id>/trace.h5); see docs/trace.md")
    p.add_argument("--no-trace", action="store_true", help="write no trace")
    p.add_argument("--trace-flush-s", type=float, default=None, metavar="SECONDS",
                   help="write the trace's buffered events about this often: what a killed run can lose "
                        "(default: every second, or less often if flushing would take over 1%% of the time)")
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


def plan_trace(args, job, schedule, argv: list[str]):
    """(trace path, RunInfo), or (None, None) with --no-trace. Raises ConfigError on bad input."""
    from hpcps.trace.setup import build_run_info, check_trace_path, default_trace_path
    if args.no_trace:
        if args.trace is not None:
            raise ConfigError("--no-trace", None, "cannot be combined with --trace")
        return None, None
    if args.trace_flush_s is not None and not args.trace_flush_s > 0:
        raise ConfigError("--trace-flush-s", None, f"must be > 0, got {args.trace_flush_s}")
    cluster = args.cluster
    if cluster is None and job.cluster:
        candidate = Path(job.cluster)
        if not candidate.is_absolute() and not candidate.exists():
            candidate = Path(job.source).parent / candidate
        cluster = candidate if candidate.is_file() else None
    info = build_run_info(job=job, schedule=schedule, argv=argv, job_path=Path(job.source),
                          schedule_path=args.schedule, cluster_path=cluster)
    path = check_trace_path(args.trace if args.trace is not None else default_trace_path(info.run_id))
    return path, info


def main(argv: list[str] | None = None) -> int:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(rank).parse_args(argv)

    # Rank 0 alone reads the files, so every rank agrees on the outcome and exits together.
    outcome = None
    if rank == 0:
        try:
            job, schedule = resolve_inputs(args, size)
            outcome = ("ok", (job, schedule, plan_trace(args, job, schedule, argv)))
        except ConfigError as e:
            outcome = ("error", str(e))
    outcome = comm.bcast(outcome, root=0)
    if outcome[0] == "error":
        fail_input(TOOL, outcome[1], rank)
    job, schedule, (trace_path, run_info) = outcome[1]

    from hpcps.comm.abort import abort_on_error
    from hpcps.ps.runtime import run_bsp
    with abort_on_error(comm, TOOL):
        log = None if args.quiet else (lambda msg: print(msg, flush=True))
        recorder = None
        if trace_path is not None:
            from hpcps.trace import TraceRecorder
            recorder = TraceRecorder(comm, trace_path, run_info, flush_s=args.trace_flush_s)
        result = run_bsp(comm, job, schedule, device=args.device, gpu_transport=args.gpu_transport, log=log,
                         recorder=recorder)
        if recorder is not None:
            recorder.close(None if result is None else {
                "wall_s": result.wall_s, "samples_per_s": result.samples_per_s,
                "final_metrics": json.dumps(result.final_metrics)})
            if log and rank == 0:
                log(f"trace: {trace_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
