"""The parameter exchange and aggregation on real MPI ranks. Runs at any size >= 3 (make test uses 3
and 5: servers colocated with workers, then servers on ranks of their own)."""

import os

import numpy as np
import pytest
import torch

from hpcps.config.job import ExchangeConfig, Job, OptimizerConfig, TrainingConfig
from hpcps.config.schedule import Schedule, WorkerSpec
from hpcps.data.partition import EpochPartition
from hpcps.ps.exchange import Exchange
from hpcps.ps.flat import FlatModel
from hpcps.ps.optim import make_optimizer
from hpcps.ps.plan import MessagePlan
from hpcps.ps.server import ServedPiece
from hpcps.workloads import build_workload
from tests.fakes import exchange_buffer

BATCHES = (5, 17, 42)


def exactness_schedule(size: int) -> Schedule:
    """Three workers (ranks 0-2) with batches 5, 17, 42 and two servers: the last two ranks."""
    workers = tuple(WorkerSpec(r, b) for r, b in enumerate(BATCHES))
    return Schedule((size - 2, size - 1), workers)


def job_for(opt: OptimizerConfig, iterations: int, exchange: ExchangeConfig | None = None) -> Job:
    """The exactness job; exchange: the default ExchangeConfig() when None."""
    return Job("exact", "digits", opt, TrainingConfig(global_batch=sum(BATCHES), iterations=iterations, seed=7),
               model={"hidden": 32}, data={"test_fraction": 0.2},
               exchange=ExchangeConfig() if exchange is None else exchange)


def single_process_reference(job: Job, iterations: int) -> np.ndarray:
    """Plain PyTorch on one process: the same model, samples and optimiser."""
    torch.manual_seed(job.training.seed)
    workload = build_workload(job.workload, job.model, job.data, job.training.seed)
    flat = FlatModel(workload.build_model())
    opt = make_optimizer(job.optimizer, list(flat.model.parameters()))
    part = EpochPartition(workload.n_train(), list(BATCHES), job.training.seed)
    for it in range(iterations):
        idx = np.concatenate([part.indices(it, w) for w in range(len(BATCHES))])
        flat.zero_grad()
        loss, _ = workload.loss(flat.model, workload.get_batch(idx))
        loss.backward()
        opt.step()
    return flat.params.detach().numpy().copy()


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("opt", [OptimizerConfig("sgd", lr=0.2, momentum=0.9, weight_decay=1e-3),
                                 # Adam's step is g / (|g| + eps): on a gradient that cancels to near zero
                                 # it magnifies the float32 rounding of a different summation order (the
                                 # reference sums all samples at once, the servers sum worker means) by up
                                 # to 1/eps. With eps 1e-6, one element of this model whose gradient
                                 # cancels to about 1e-6 moved by 2-3e-6 under one order or the other,
                                 # float64 server sums included, so eps is 1e-5 here to keep the
                                 # comparison at float32 tolerance.
                                 OptimizerConfig("adam", lr=0.01, eps=1e-5)], ids=["sgd", "adam"])
@pytest.mark.parametrize("iterations", [1, 3])
# One piece a shard (the default bucket), many small pieces pushed during the backward pass and pulled
# layer by layer (1 KiB: 256 values), and the same without overlap.
@pytest.mark.parametrize("exchange", [ExchangeConfig(), ExchangeConfig(bucket_mb=1 / 1024),
                                      ExchangeConfig(bucket_mb=1 / 1024, overlap=False)],
                         ids=["one-piece", "pieces", "pieces-no-overlap"])
def test_unequal_batches_aggregate_exactly(opt, iterations, exchange):
    from mpi4py import MPI

    from hpcps.ps.runtime import run_bsp
    comm = MPI.COMM_WORLD
    job = job_for(opt, iterations, exchange)
    # HPCPS_TEST_DEVICE=cuda runs the workers on a GPU (benchmarks/gpu_check.sh; the transport follows
    # HPCPS_GPU_TRANSPORT); the reference stays on the CPU.
    result = run_bsp(comm, job, exactness_schedule(comm.Get_size()), device=os.environ.get("HPCPS_TEST_DEVICE", "cpu"))
    if comm.Get_rank() == 0:
        expected = single_process_reference(job, iterations)
        assert result.final_params.shape == expected.shape
        np.testing.assert_allclose(result.final_params, expected, rtol=1e-5, atol=2e-6)


@pytest.mark.mpi(min_size=3)
def test_unweighted_averaging_would_be_caught():
    """The reference differs from an unweighted average of worker means by far more than the tolerance,
    so the exactness test above can tell the two apart."""
    from mpi4py import MPI
    if MPI.COMM_WORLD.Get_rank() != 0:
        return
    job = job_for(OptimizerConfig("sgd", lr=0.2), 1)
    torch.manual_seed(job.training.seed)
    workload = build_workload(job.workload, job.model, job.data, job.training.seed)
    flat = FlatModel(workload.build_model())
    part = EpochPartition(workload.n_train(), list(BATCHES), job.training.seed)
    means = []
    for w in range(3):
        flat.zero_grad()
        loss, _ = workload.loss(flat.model, workload.get_batch(part.indices(0, w)))
        loss.backward()
        means.append(flat.grads.clone())
    weighted = sum(g * k for g, k in zip(means, BATCHES)) / sum(BATCHES)
    unweighted = sum(means) / 3
    assert float((weighted - unweighted).abs().max()) * 0.2 > 1e-3


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("transport", ["direct", "staged"])
def test_device_buffers_exchange_through_mpi(transport):
    """Workers whose buffers are device arrays (faked over host memory) pull and push correctly."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    n = 1000
    servers = (0, size - 1) if size > 2 else (0,)
    workers = tuple(WorkerSpec(r, r + 1) for r in range(size))
    # 64-element buckets: several pieces per shard, so pieces, not shards, are what moves
    plan = MessagePlan.build(n, servers, [w.rank for w in workers], bucket_bytes=256)
    assert len(plan.pieces) > len(servers)
    truth = np.linspace(-1, 1, n, dtype=np.float32)
    batches = [w.batch for w in workers]
    served = {p.index: ServedPiece(p, truth[p.start:p.stop], batches, OptimizerConfig("sgd", lr=1.0))
              for p in plan.pieces if p.server == rank}

    params_mem = np.zeros(n, np.float32)
    grads_mem = np.full(n, float(rank + 1), np.float32)      # worker r pushes the constant r + 1
    exchange = Exchange(comm, plan, 2, params=exchange_buffer(params_mem, transport),
                        grads=exchange_buffer(grads_mem, transport),
                        served=served)
    exchange.start()
    exchange.wait_pieces(slice(None))
    np.testing.assert_array_equal(params_mem, truth)
    exchange.begin_pushes(0)
    for p in plan.push_order():
        exchange.push(p.index)
    exchange.expect_pulls(1)
    exchange.wait_until(lambda: exchange.pushes_done() and exchange.served_through(0))
    exchange.wait_pieces(slice(None))
    # SGD with lr 1 on the batch-weighted mean of the pushes
    k = np.array(batches, dtype=np.float64)
    mean_push = float((k * (np.arange(size) + 1)).sum() / k.sum())
    np.testing.assert_allclose(params_mem, truth - mean_push, rtol=1e-6)
    exchange.begin_pushes(1)                  # the second and last iteration: nothing is pulled after it
    for p in plan.push_order():
        exchange.push(p.index)
    exchange.wait_until(lambda: exchange.pushes_done() and exchange.served_through(1))
    exchange.drain()
    final = exchange.gather_params(n, root=0)
    if rank == 0:
        np.testing.assert_allclose(final, truth - 2 * mean_push, rtol=1e-6)
