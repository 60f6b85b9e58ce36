"""python -m hpcps.train: one parameter-server training run under mpirun, mpiexec or srun.

    mpirun -n 16 python -m hpcps.train                       # the default job, default schedule
    mpirun -n 5 python -m hpcps.train --job jobs/digits.toml --schedule my_schedule.toml

Rank 0 reads and checks the job and schedule and tells every rank; bad input ends every rank with
status 2 and one message. Any exception during training ends the whole job (MPI_Abort).
Every run writes a trace (docs/trace.md) unless --no-trace is given.

    mpirun -n 5 python -m hpcps.train --job jobs/digits.toml --checkpoint ckpt/   # checkpoints (docs/checkpoints.md)
    mpirun -n 3 python -m hpcps.train --job jobs/digits.toml --resume ckpt/ --schedule other.toml
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from hpcps.cli import RankAwareParser, default_job_path, fail_input
from hpcps.comm.buffers import TRANSPORTS
from hpcps.config import ConfigError, default_schedule, load_job
from hpcps.config.job import parse_sync_name
from hpcps.emulate.node import COMPUTE_MODES
from hpcps.workloads import BUILTIN

TOOL = "hpcps.train"


def build_parser(rank: int = 0) -> RankAwareParser:
    p = RankAwareParser(prog="python -m hpcps.train", rank=rank,
                        description="Train a job with parameter servers and workers on the ranks of an MPI launch.")
    p.add_argument("--job", type=Path, default=None, help="job TOML file (default: jobs/default.toml)")
    p.add_argument("--schedule", type=Path, default=None,
                   help="schedule TOML file (default: the job's [schedule], else every rank a worker with "
                        "an equal batch and one colocated server per four ranks)")
    p.add_argument("--iterations", type=int, default=None, help="train this many iterations (overrides the job)")
    p.add_argument("--sync", default=None, metavar="MODE",
                   help="synchronise as MODE: bsp, asp, or sspN (ssp with staleness N >= 1); overrides the job's "
                        "training.sync and staleness")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where workers compute (default auto: a GPU when PyTorch sees one)")
    p.add_argument("--gpu-transport", choices=TRANSPORTS, default="auto",
                   help="how device buffers reach MPI: direct (CUDA-aware MPI) or staged through pinned host "
                        "memory; auto asks the MPI library (env HPCPS_GPU_TRANSPORT also overrides)")
    p.add_argument("--cluster", type=Path, default=None,
                   help="cluster TOML file the ranks run on or stand for (default: the job's cluster key); "
                        "the schedule may then be a node schedule ([[nodes]], docs/cluster.md)")
    p.add_argument("--placement", choices=("auto", "slurm", "hosts", "emulate"), default="auto",
                   help="which node each rank is: from SLURMD_NODENAME (slurm), host names (hosts), or the "
                        "schedule on one machine that emulates the cluster (emulate); auto picks slurm or "
                        "hosts when every rank runs on a node of the cluster, else emulate")
    p.add_argument("--time-dilation", type=float, default=None, metavar="X",
                   help="emulation only: real seconds per emulated second (default: twice the fastest "
                        "node's speed); reported times are emulated")
    p.add_argument("--emulate-compute", choices=COMPUTE_MODES, default="reference",
                   help="emulation only: charge every step the time the worker's step takes alone here, "
                        "timed at start-up with the ranks taking turns (reference, default), or each step "
                        "its own CPU time, which other ranks' interference inflates (measured); "
                        "docs/emulation.md")
    p.add_argument("--step-costs", type=Path, default=None, metavar="FILE",
                   help="emulation only (reference compute): charge each worker's step what FILE records for "
                        "its workload and batch size, and record there the steps timed in this run, so that "
                        "runs sharing FILE (a tuning run's trials) charge one step alike; created if missing "
                        "(docs/emulation.md)")
    p.add_argument("--trace", type=Path, default=None,
                   help="HDF5 trace file to write (default: results/runs/<run-id>/trace.h5); see docs/trace.md")
    p.add_argument("--no-trace", action="store_true", help="write no trace")
    p.add_argument("--trace-flush-s", type=float, default=None, metavar="SECONDS",
                   help="write the trace's buffered events about this often: what a killed run can lose "
                        "(default: every second, or less often if flushing would take over 0.5%% of the time)")
    p.add_argument("--checkpoint", type=Path, default=None, metavar="DIR",
                   help="write checkpoints into DIR (created if missing): every training.checkpoint_every "
                        "iterations, every training.checkpoint_every_s seconds (default 600), at the end, and "
                        "on SIGUSR1 or SIGTERM, after which the run stops with exit status 75; the newest two "
                        "are kept. DIR must not hold checkpoints already unless --resume is given")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue from the newest good checkpoint in DIR (or from the checkpoint file DIR), "
                        "under this launch's schedule, which may differ from the one that wrote it (other "
                        "ranks, servers, batches); checkpoints go on into DIR unless --checkpoint names another")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


@dataclass(frozen=True)
class Launch:
    """What every rank needs to know before training, decided on rank 0."""
    job: object
    schedule: object                 # rank-level hpcps.config.schedule.Schedule
    placement: object = None         # hpcps.cluster.placement.RankPlacement, with a cluster
    cluster: object = None
    emulation: object = None         # hpcps.ps.runtime.Emulation, when one machine stands for the cluster


def cluster_path(args, job) -> Path | None:
    """--cluster, else the job's cluster key (hpcps.cli.cluster_path)."""
    from hpcps.cli import cluster_path as resolve
    return resolve(args.cluster, job)


def resolve_inputs(args, n_ranks: int, rank_names: list[tuple[str, str]] | None = None,
                   hosts: list[str] | None = None, testbed_ids: list[tuple[str, int]] | None = None) -> Launch:
    """Load and check the job, cluster and schedule for n_ranks. Raises ConfigError on bad input.

    rank_names: per rank (node name, how found) from hpcps.cluster.mapping.local_node_name;
    hosts: per rank its host name; testbed_ids: per rank hpcps.testbed.ranks.rank_identity()."""
    from hpcps.config import limits
    from hpcps.config.schedule import parse_schedule
    from hpcps.config.toml_schema import check_number, read_toml
    from hpcps.workloads import check_data_size, load_factory
    job = load_job(args.job or default_job_path())
    if args.iterations is not None:
        check_number("--iterations", None, args.iterations, gt=0, le=limits.MAX_ITERATIONS)
        job = job.with_iterations(args.iterations)
    if args.sync is not None:
        try:
            job = job.with_sync(*parse_sync_name(args.sync))
        except ValueError as e:
            raise ConfigError("--sync", None, str(e)) from None
    if args.time_dilation is not None:
        check_number("--time-dilation", None, args.time_dilation, ge=1, le=limits.MAX_TIME_DILATION)
    check_gpu_transport(args)
    load_factory(job.workload, job.source)      # a custom workload that does not import: one message
    check_data_size(job)
    gb = job.training.global_batch
    path = cluster_path(args, job)
    table = read_toml(args.schedule) if args.schedule is not None else None
    if path is None:
        if table is not None and "nodes" in table:
            raise ConfigError(str(args.schedule), "nodes",
                              "a node schedule needs a cluster: give --cluster FILE or the job's cluster key")
        schedule = (parse_schedule(table, str(args.schedule)) if table is not None else
                    job.schedule or default_schedule(n_ranks, gb))
        schedule.check_against(n_ranks, gb)
        if args.step_costs is not None:
            raise ConfigError("--step-costs", None, "only an emulated run (or one on a testbed) charges step "
                                                    "costs: give --cluster FILE (or the job's cluster key)")
        return Launch(job, schedule)
    return _resolve_on_cluster(args, job, path, table, n_ranks, rank_names or [], hosts or [], testbed_ids or [])


def _resolve_on_cluster(args, job, path, table, n_ranks, rank_names, hosts, testbed_ids) -> Launch:
    from hpcps.cluster import load_cluster
    from hpcps.cluster.mapping import choose_mode, place
    from hpcps.cluster.placement import RankPlacement, parse_node_schedule, place_rank_schedule
    from hpcps.config.schedule import parse_schedule
    cluster = load_cluster(path)
    gb = job.training.global_batch
    names = [n for n, _ in rank_names] or ["?"] * n_ranks
    mode = choose_mode(args.placement, names, [h for _, h in rank_names] or ["hosts"] * n_ranks, cluster)
    if table is not None and "nodes" in table:
        ns = parse_node_schedule(table, str(args.schedule))
        ns.check_against(cluster, gb)
        placement = place(ns, cluster, mode, names)
    else:
        schedule = (parse_schedule(table, str(args.schedule)) if table is not None else
                    job.schedule or default_schedule(n_ranks, gb))
        schedule.check_against(n_ranks, gb)
        placement = (place_rank_schedule(schedule, cluster) if mode == "emulate" else
                     RankPlacement(schedule, tuple(names)))
        for r, node in enumerate(placement.rank_nodes):
            if not cluster.has(node):
                raise ConfigError(str(path), None, f"rank {r} runs on {node!r}, not a node of this cluster")
        placement.check_threads(cluster)
    placement.schedule.check_against(n_ranks, gb)
    profile = _profile(job)
    if profile is not None:
        from hpcps.sim import check_memory, load_profiles
        verdict = check_memory(cluster, placement, profile, load_profiles().machine)
        if verdict != "ok":
            raise ConfigError(str(path), "memory_gb", f"the schedule does not fit: {verdict}")
    # One machine standing for several nodes (emulation, or a test Slurm whose nodes share a host).
    emulate = mode == "emulate" or (len(set(hosts)) == 1 and len(set(placement.rank_nodes)) > 1)
    emulation = None
    testbed = None
    if mode != "emulate":
        from hpcps.testbed.ranks import on_testbed
        testbed = on_testbed(testbed_ids, placement.rank_nodes)
    if testbed is not None:
        # Nodes of a testbed: real links between them, shaped for its dilation; compute is emulated.
        from hpcps.ps.runtime import Emulation
        name, dilation = testbed
        if args.time_dilation is not None and args.time_dilation != dilation:
            raise ConfigError("--time-dilation", None, f"testbed {name}'s links are shaped for time dilation "
                                                       f"{dilation:g}; give that or leave it out")
        emulation = Emulation(cluster, placement, profile, dilation, args.emulate_compute, network="real",
                              **shared_step_costs(args, job))
    elif emulate:
        from hpcps.emulate.rank import default_dilation
        from hpcps.ps.runtime import Emulation
        dilation = args.time_dilation or default_dilation(cluster, placement, profile)
        emulation = Emulation(cluster, placement, profile, dilation, args.emulate_compute,
                              **shared_step_costs(args, job))
    elif args.step_costs is not None:
        raise ConfigError("--step-costs", None, "only an emulated run (or one on a testbed) charges step costs; "
                                                "this run's ranks are on the cluster's own nodes")
    return Launch(job, placement.schedule, placement, cluster, emulation)


def shared_step_costs(args, job) -> dict:
    """Emulation's step-costs fields for --step-costs (none without it). Raises ConfigError."""
    if args.step_costs is None:
        return {}
    from hpcps.emulate import step_costs
    if args.emulate_compute != "reference":
        raise ConfigError("--step-costs", None, f"applies to --emulate-compute reference, not {args.emulate_compute}")
    from hpcps.io.outputs import check_output
    # Replaced whole as it grows, so never one of this command's inputs (a missing folder is made then).
    path = check_output(args.step_costs, "--step-costs", inputs=[job.source, args.schedule, cluster_path(args, job)],
                        replace=True, example="step_costs.json").resolve()
    key = step_costs.workload_key(job.workload, job.model, job.data)
    known = step_costs.read(path).get(key, {})
    return {"step_costs": path, "step_costs_key": key, "known_step_costs": tuple(sorted(known.items()))}


def check_gpu_transport(args) -> None:
    """--gpu-transport, or HPCPS_GPU_TRANSPORT when the flag is auto, must name a transport (checked
    whatever the device, so a typo is caught before the run that would need it)."""
    from hpcps.comm.buffers import TRANSPORT_ENV, TransportError, requested_transport
    try:
        requested_transport(args.gpu_transport)
    except TransportError:
        raise ConfigError(TRANSPORT_ENV, None, f"must be one of {', '.join(TRANSPORTS)}; "
                          f"got {os.environ.get(TRANSPORT_ENV)!r}") from None


def _profile(job):
    """The job's calibrated compute profile: it drives the memory check and the emulation's thread
    model. A custom workload may have none (None); for a built-in one, and for a compute profile file
    that is missing or broken, the ConfigError stands."""
    from hpcps.sim import load_profiles, profile_for_job
    profiles = load_profiles()
    if job.workload not in BUILTIN and job.workload not in {w.name for w in profiles.workloads}:
        return None
    return profile_for_job(profiles, job.workload, job.model, job.data)


@dataclass(frozen=True)
class CheckpointPlan:
    """Where checkpoints go and whether the run resumes: what every rank learns from rank 0."""
    directory: Path | None = None
    resuming: bool = False
    notes: tuple[str, ...] = ()          # checkpoints skipped on the way to the one resumed from


def resolve_checkpoints(args, job):
    """(CheckpointPlan, the checkpoint to resume from or None), read and verified on rank 0 before
    anything is written. Raises ConfigError (a CheckpointError for an unusable checkpoint)."""
    from hpcps.ps.checkpoint import check_resumable, check_rng_states, list_checkpoints, load_resume
    loaded, notes = None, ()
    directory = args.checkpoint
    if args.resume is not None:
        loaded, skipped = load_resume(args.resume)
        check_resumable(loaded, job)
        check_rng_states(loaded)
        if job.training.iterations > 0 and loaded.iteration > job.training.iterations:
            raise ConfigError(str(loaded.path), None,
                              f"is after iteration {loaded.iteration}, past this run's {job.training.iterations} "
                              f"iterations (give --iterations N with N >= {loaded.iteration})")
        notes = tuple(f"skipped {p}: {why}" for p, why in skipped)
        if directory is None:
            directory = args.resume if args.resume.is_dir() else args.resume.parent
    if directory is not None:
        from hpcps.io.outputs import check_output
        check_output(directory, "--checkpoint", inputs=[job.source, args.schedule], replace=False, directory=True)
        held = list_checkpoints(directory)
        if args.resume is None and held:
            raise ConfigError("--checkpoint", None,
                              f"{directory} already holds checkpoints (newest {held[0][1].name}); give --resume "
                              f"{directory} to continue from them, or another directory")
    return CheckpointPlan(directory, loaded is not None, notes), loaded


def plan_trace(args, job, schedule, argv: list[str]):
    """(trace path, RunInfo), or (None, None) with --no-trace. Raises ConfigError on bad input."""
    from hpcps.trace.setup import build_run_info, check_trace_path, default_trace_path
    if args.no_trace:
        if args.trace is not None:
            raise ConfigError("--no-trace", None, "cannot be combined with --trace")
        return None, None
    if args.trace_flush_s is not None:
        from hpcps.config import limits
        from hpcps.config.toml_schema import check_number
        check_number("--trace-flush-s", None, args.trace_flush_s, gt=0, le=limits.MAX_FLUSH_S)
    from hpcps.trace.recorder import clock_skew_s
    clock_skew_s()                       # every rank reads it when it starts recording: checked here first
    cluster = cluster_path(args, job)
    info = build_run_info(job=job, schedule=schedule, argv=argv, job_path=Path(job.source),
                          schedule_path=args.schedule, cluster_path=cluster)
    inputs = [job.source, args.schedule, cluster, os.environ.get("HPCPS_PROFILES")]
    path = check_trace_path(args.trace if args.trace is not None else default_trace_path(info.run_id),
                            inputs=inputs)
    return path, info


def main(argv: list[str] | None = None) -> int:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(rank).parse_args(argv)
    signals = None
    if args.checkpoint is not None or args.resume is not None:
        # At once: SIGUSR1 (Slurm's time-limit warning) or SIGTERM must not end a rank while it starts.
        from hpcps.ps.checkpointer import StopSignals
        signals = StopSignals(rank).install()

    from hpcps.cluster.mapping import local_node_name
    from hpcps.comm.waits import sleeping_barrier
    from hpcps.testbed.ranks import rank_identity
    # Ranks that finished their imports wait asleep for the others (hpcps/comm/waits.py).
    sleeping_barrier(comm)
    rank_names = comm.allgather(local_node_name())
    hosts = comm.allgather(socket.gethostname())
    testbed_ids = comm.allgather(rank_identity())
    # Rank 0 alone reads the files, so every rank agrees on the outcome and exits together.
    outcome = None
    loaded = None                    # rank 0: the checkpoint to resume from, read and verified
    if rank == 0:
        try:
            launch = resolve_inputs(args, size, rank_names, hosts, testbed_ids)
            ckpt_plan, loaded = resolve_checkpoints(args, launch.job)
            outcome = ("ok", (launch, plan_trace(args, launch.job, launch.schedule, argv), ckpt_plan))
        except ConfigError as e:
            outcome = ("error", str(e))
        except Exception as e:  # noqa: BLE001 - the other ranks wait for this outcome: any failure must reach them
            sys.stderr.write(traceback.format_exc())
            outcome = ("crash", f"{TOOL}: error on rank 0 while reading the inputs: {type(e).__name__}: {e}")
    sleeping_barrier(comm)                 # while rank 0 reads the inputs
    outcome = comm.bcast(outcome, root=0)
    if outcome[0] == "error":
        fail_input(TOOL, outcome[1], rank)
    if outcome[0] == "crash":
        if rank == 0:
            sys.stderr.write(outcome[1] + "\n")
        sys.exit(1)
    launch, (trace_path, run_info), ckpt_plan = outcome[1]
    job, schedule, emulation = launch.job, launch.schedule, launch.emulation

    # Each rank checks where it computes and how its buffers reach MPI, so a GPU transport that cannot
    # work here (direct on an MPI that cannot read device memory) is one clear error at start-up.
    from hpcps.comm.buffers import TransportError, choose_transport
    from hpcps.ps.runtime import pick_device, run_training
    problem = None
    try:
        device = pick_device(args.device, schedule.worker(rank) is not None)
        choose_transport(args.gpu_transport, device == "cuda")
    except (TransportError, RuntimeError) as e:
        problem = f"rank {rank}: {e}"
    problems = [p for p in comm.allgather(problem) if p]
    if problems:
        fail_input(TOOL, problems[0], rank)

    from hpcps.comm.abort import abort_on_error
    from hpcps.comm.watch import RankWatch
    stopped = False
    watch = RankWatch(comm, TOOL)        # names a rank that dies without a word (SIGKILL) and ends the job
    with abort_on_error(comm, TOOL):
        log = None if args.quiet else (lambda msg: print(msg, flush=True))
        node_name = node_type = None
        if launch.placement is not None:
            node_name = launch.placement.rank_nodes[rank]
            node_type = launch.cluster.node(node_name).type.name
            if log and rank == 0:
                how = ("as launched" if emulation is None else
                       f"on a testbed: real links, compute emulated at time dilation {emulation.dilation:g}"
                       if emulation.network == "real" else
                       f"emulated on this machine at time dilation {emulation.dilation:g}")
                log(f"cluster {launch.cluster.name}: ranks on nodes {', '.join(launch.placement.rank_nodes)} ({how})")
        recorder = None
        if trace_path is not None:
            # Under emulation the recorder reads the dilated clock too, so traces hold emulated times.
            from hpcps.emulate.fabric import emulated_clock
            from hpcps.trace import TraceRecorder
            clock = emulated_clock(emulation.dilation) if emulation else None
            recorder = TraceRecorder(comm, trace_path, run_info, flush_s=args.trace_flush_s,
                                     node_name=node_name, node_type=node_type,
                                     **({"clock": clock} if clock else {}))
        checkpoints = None
        if ckpt_plan.directory is not None or ckpt_plan.resuming:
            from hpcps.ps.checkpointer import CheckpointSettings
            checkpoints = CheckpointSettings(ckpt_plan.directory, job.training.checkpoint_every,
                                             job.training.checkpoint_every_s, resume=loaded,
                                             resuming=ckpt_plan.resuming, signals=signals)
            for note in ckpt_plan.notes:
                if log and rank == 0:
                    log(note)
        result = run_training(comm, job, schedule, device=args.device, gpu_transport=args.gpu_transport, log=log,
                              warn=lambda msg: print(f"{TOOL}: {msg}", file=sys.stderr, flush=True),
                              recorder=recorder, emulation=emulation, checkpoints=checkpoints)
        loaded = None
        if recorder is not None:
            recorder.close(None if result is None else {
                "wall_s": result.wall_s, "samples_per_s": result.samples_per_s,
                "final_metrics": json.dumps(result.final_metrics)})
            if log and rank == 0:
                log(f"trace: {trace_path}")
        # Every rank waits here for rank 0 (its evaluation, the trace) without spinning, its watch off:
        # from now on ranks end one by one.
        watch.stop()
        stopped = bool(_bcast_sleeping(comm, int(result is not None and result.stopped)))
    if signals is not None:
        signals.uninstall()
    if stopped:
        from hpcps.ps.checkpointer import EXIT_STOPPED
        return EXIT_STOPPED
    return 0


def _bcast_sleeping(comm, value: int) -> int:
    """Rank 0's value on every rank; the others sleep while they wait instead of polling a core."""
    import time

    import numpy as np
    buf = np.array([value], dtype=np.int64)
    req = comm.Ibcast(buf, root=0)
    while not req.Test():
        time.sleep(0.005)
    return int(buf[0])


if __name__ == "__main__":
    sys.exit(main())
