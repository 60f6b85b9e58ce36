"""One process on one GPU: hpcps (one rank that is worker and server) against a plain PyTorch loop on the
same model, data, batch and optimiser, in alternating blocks.

    mpiexec -n 1 python benchmarks/gpu_single.py --job jobs/cifar.toml --rounds 3

Prints one JSON line: each framework's samples/s per block, their medians and the ratio hpcps / plain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace

import torch
from mpi4py import MPI

from hpcps.config import load_job
from hpcps.config.schedule import Schedule, WorkerSpec
from hpcps.data.partition import EpochPartition
from hpcps.ps.optim import make_optimizer
from hpcps.ps.runtime import run_training
from hpcps.workloads import build_workload


def plain(job, iterations: int, warmup: int, device: str) -> float:
    torch.manual_seed(job.training.seed)
    workload = build_workload(job.workload, job.model, job.data, job.training.seed)
    model = workload.build_model().to(device)
    opt = make_optimizer(job.optimizer, model.parameters())
    part = EpochPartition(workload.n_train(), [job.training.global_batch], job.training.seed)
    for it in range(warmup + iterations):
        if it == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = (t.to(device, non_blocking=True) for t in workload.get_batch(part.indices(it, 0)))
        opt.zero_grad(set_to_none=False)
        loss, _ = workload.loss(model, (x, y))
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return iterations * job.training.global_batch / (time.perf_counter() - t0)


def hpcps(job, iterations: int, warmup: int, device: str) -> float:
    schedule = Schedule((0,), (WorkerSpec(0, job.training.global_batch),))
    run = replace(job, training=replace(job.training, iterations=warmup + iterations, epochs=0.0,
                                        log_every=warmup, eval_every=0))
    result = run_training(MPI.COMM_WORLD, run, schedule, device=device)
    steady = [r for r in result.history if r["iteration"] > warmup]
    return statistics.mean(r["samples_per_s"] for r in steady)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default="jobs/cifar.toml")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iterations", type=int, default=100, help="a multiple of --warmup")
    args = p.parse_args()
    job = load_job(args.job)
    out = {"plain": [], "hpcps": []}
    for r in range(args.rounds):
        order = ("plain", "hpcps") if r % 2 == 0 else ("hpcps", "plain")
        for name in order:
            out[name].append((plain if name == "plain" else hpcps)(job, args.iterations, args.warmup, "cuda"))
    med = {k: statistics.median(v) for k, v in out.items()}
    print(json.dumps({"job": args.job, "samples_per_s": out, "median": med, "ratio": med["hpcps"] / med["plain"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
