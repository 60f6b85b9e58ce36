"""A workload factory (the job format's 'module:factory' form) that wraps a built-in workload and notes
the wall and CPU clocks each time the runtime fetches a batch, once per iteration on every worker.
benchmarks/_ps_vs_ddp_ranks.py uses it to measure the CPU time per steady-state iteration of hpcps
without touching the runtime: the wrapped workload computes exactly what the built-in one does."""

from __future__ import annotations

import time

INNER = "cifar-resnet"                 # the built-in workload to wrap; set before the runtime builds it
MARKS: list[tuple[float, float]] = []  # (perf_counter, process_time) at each get_batch


def clocked(model: dict, data: dict, seed: int):
    from hpcps.workloads import build_workload
    workload = build_workload(INNER, model, data, seed)
    fetch = workload.get_batch

    def get_batch(indices):
        MARKS.append((time.perf_counter(), time.process_time()))
        return fetch(indices)

    workload.get_batch = get_batch
    return workload
