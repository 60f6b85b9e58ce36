"""The rank side of benchmarks/ps_vs_ddp.py: timed training blocks, run under mpiexec.

    mpiexec -n 4 python benchmarks/_ps_vs_ddp_ranks.py --configs hpcps:1,ddp,allreduce,hpcps:4 --rounds 6 --port 29511

Each round runs one block of every configuration, in an order that rotates from round to round
(A B C, then B C A, then C A B, ...), so that all configurations see the same machine load and take
every position in a round equally often. A block builds its model afresh from the job's seed, runs
--warmup iterations, then times --iterations iterations. Each block also reports the CPU time per
steady-state iteration, summed over the ranks (time.process_time, every thread of the process).

- hpcps:S  hpcps.ps.runtime.run_training (the code path of `python -m hpcps.train`): every rank a worker
           with global_batch / n of the batch, S servers colocated on ranks 0..S-1. The steady-state
           time is the sum of run_training's own log windows after the warm-up. The job's workload is
           wrapped by benchmarks/_clocked_workload.py, which notes the clocks at each batch fetch.
- ddp      torch.nn.parallel.DistributedDataParallel over the gloo backend (TCP on 127.0.0.1) on the
           same network, built by the same workload: the same data, per-rank batches
           (hpcps.data.partition.EpochPartition) and optimiser (hpcps.ps.optim.make_optimizer from the
           job). Timed between two barriers. MPI is idle meanwhile (MPICH has no progress thread).

Every rank uses one PyTorch thread. Rank 0 prints one line per block: RESULT {json}.

- allreduce  the same data parallelism on the same MPI: gradients in one flat buffer, averaged by one
           mpi4py Allreduce after the backward pass, the job's optimiser on every rank.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import _clocked_workload  # noqa: E402  (benchmarks/, this script's directory, is on sys.path)
import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI
from torch.nn.parallel import DistributedDataParallel as DDP

from hpcps.comm.abort import abort_on_error
from hpcps.config import load_job
from hpcps.config.schedule import Schedule, WorkerSpec, split_evenly
from hpcps.data.partition import EpochPartition
from hpcps.ps.optim import make_optimizer
from hpcps.ps.runtime import run_training
from hpcps.workloads import build_workload

DEVICE = "cpu"       # --device: where every framework computes (cuda: each rank on its local GPU)


def _to(batch):
    return tuple(t.to(DEVICE, non_blocking=True) for t in batch)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def hpcps_block(comm, job, servers: int, warmup: int, window: int) -> dict:
    n = comm.Get_size()
    batches = split_evenly(job.training.global_batch, n)
    schedule = Schedule(tuple(range(servers)), tuple(WorkerSpec(r, b, 1) for r, b in enumerate(batches)),
                        f"<{servers} colocated servers, {n} workers>")
    _clocked_workload.INNER = job.workload
    _clocked_workload.MARKS.clear()
    result = run_training(comm, replace(job, workload="_clocked_workload:clocked"), schedule, device=DEVICE)
    marks = _clocked_workload.MARKS
    (_, c0), (_, c1) = marks[warmup], marks[-1]
    cpu = comm.reduce((c1 - c0) / (len(marks) - 1 - warmup), op=MPI.SUM, root=0)
    if result is None:
        return {}
    steady = [row for row in result.history if row["iteration"] > warmup]
    gb = job.training.global_batch
    return {"seconds": sum(window * gb / row["samples_per_s"] for row in steady),
            "iterations": window * len(steady), "last_window_loss": steady[-1]["loss"],
            "cpu_s_per_iteration_all_ranks": cpu}


def ddp_block(comm, job, workload, warmup: int, iterations: int, window: int) -> dict:
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.manual_seed(job.training.seed)
    model = DDP(workload.build_model().to(DEVICE))  # DDP broadcasts rank 0's initial parameters
    opt = make_optimizer(job.optimizer, model.parameters())
    partition = EpochPartition(workload.n_train(), split_evenly(job.training.global_batch, size), job.training.seed)
    stats = torch.zeros(2)                          # loss * batch, samples over the last window

    def step(it: int) -> None:
        batch = _to(workload.get_batch(partition.indices(it, rank)))
        opt.zero_grad(set_to_none=False)
        loss, _correct = workload.loss(model, batch)
        loss.backward()                             # gloo allreduce of the gradient buckets, overlapped
        opt.step()
        if it >= warmup + iterations - window:
            stats.add_(torch.tensor([float(loss.detach()) * len(batch[1]), len(batch[1])]))

    for it in range(warmup):
        step(it)
    _sync()
    dist.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    for it in range(warmup, warmup + iterations):
        step(it)
    _sync()
    c1 = time.process_time()
    dist.barrier()
    seconds = time.perf_counter() - t0
    dist.all_reduce(stats)
    cpu = comm.reduce((c1 - c0) / iterations, op=MPI.SUM, root=0)
    return {"seconds": seconds, "iterations": iterations, "last_window_loss": float(stats[0] / stats[1]),
            "cpu_s_per_iteration_all_ranks": cpu}


def allreduce_block(comm, job, workload, warmup: int, iterations: int, window: int) -> dict:
    """Data parallelism as a capable MPI user writes it: the gradients in one flat buffer, averaged with
    one mpi4py Allreduce (sum, then scaled) after the backward pass, the optimiser on every rank."""
    from hpcps.ps.flat import FlatModel
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.manual_seed(job.training.seed)
    flat = FlatModel(workload.build_model(), DEVICE)
    init = flat.params.detach().cpu().numpy()
    comm.Bcast(init, root=0)
    flat.params.copy_(torch.from_numpy(init))
    opt = make_optimizer(job.optimizer, flat.model.parameters())
    batches = split_evenly(job.training.global_batch, size)
    partition = EpochPartition(workload.n_train(), batches, job.training.seed)
    # On a GPU the gradient goes through pinned host memory: this MPI cannot read device memory.
    grads = flat.grads.numpy() if DEVICE == "cpu" else torch.empty(flat.numel, pin_memory=True).numpy()
    share = batches[rank] / job.training.global_batch     # unequal batches: weight each rank's mean
    stats = np.zeros(2)

    def step(it: int) -> None:
        batch = _to(workload.get_batch(partition.indices(it, rank)))
        flat.zero_grad()
        loss, _correct = workload.loss(flat.model, batch)
        loss.backward()
        if DEVICE != "cpu":
            torch.from_numpy(grads).copy_(flat.grads)
        np.multiply(grads, share, out=grads)
        comm.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)
        if DEVICE != "cpu":
            flat.grads.copy_(torch.from_numpy(grads), non_blocking=True)
        opt.step()
        if it >= warmup + iterations - window:
            stats[:] += (float(loss.detach()) * len(batch[1]), len(batch[1]))

    for it in range(warmup):
        step(it)
    _sync()
    comm.Barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    for it in range(warmup, warmup + iterations):
        step(it)
    _sync()
    c1 = time.process_time()
    comm.Barrier()
    seconds = time.perf_counter() - t0
    total = np.zeros(2)
    comm.Allreduce(stats, total, op=MPI.SUM)
    cpu = comm.reduce((c1 - c0) / iterations, op=MPI.SUM, root=0)
    return {"seconds": seconds, "iterations": iterations, "last_window_loss": float(total[0] / total[1]),
            "cpu_s_per_iteration_all_ranks": cpu}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default="jobs/cifar.toml")
    p.add_argument("--configs", default="hpcps:1,ddp", help="comma-separated: hpcps:SERVERS or ddp")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--port", type=int, default=29511, help="TCP port of the gloo rendezvous on 127.0.0.1")
    p.add_argument("--warmup", type=int, default=10, help="iterations per block before timing starts")
    p.add_argument("--iterations", type=int, default=60, help="timed iterations per block")
    p.add_argument("--window", type=int, default=10, help="run_training log window; must divide warmup and iterations")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda":
        import os
        local = int(os.environ.get("MPI_LOCALRANKID", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")))
        torch.cuda.set_device(local % torch.cuda.device_count())
    if args.warmup % args.window or args.iterations % args.window:
        p.error("--window must divide --warmup and --iterations")
    configs = args.configs.split(",")
    for c in configs:
        if c not in ("ddp", "allreduce") and not (c.startswith("hpcps:") and c[6:].isdigit() and int(c[6:]) >= 1):
            p.error(f"unknown configuration {c!r}: use hpcps:SERVERS, ddp or allreduce")

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(1)
    job = load_job(args.job)
    job = replace(job, training=replace(job.training, iterations=args.warmup + args.iterations, epochs=0.0,
                                        log_every=args.window, eval_every=0))
    with abort_on_error(comm, "benchmarks/_ps_vs_ddp_ranks.py"):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=size)
        workload = build_workload(job.workload, job.model, job.data, job.training.seed, job.source)
        for r in range(args.rounds):
            k = r % len(configs)                    # rotate: every configuration takes every position
            for c in configs[k:] + configs[:k]:
                comm.Barrier()
                if c == "ddp":
                    out = ddp_block(comm, job, workload, args.warmup, args.iterations, args.window)
                elif c == "allreduce":
                    out = allreduce_block(comm, job, workload, args.warmup, args.iterations, args.window)
                else:
                    out = hpcps_block(comm, job, int(c[6:]), args.warmup, args.window)
                if rank == 0:
                    gb = job.training.global_batch
                    out.update(config=c, round=r, ranks=size, global_batch=gb,
                               samples_per_s=out["iterations"] * gb / out["seconds"])
                    print("RESULT " + json.dumps(out), flush=True)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
