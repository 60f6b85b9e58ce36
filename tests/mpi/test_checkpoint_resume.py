"""Checkpoints of a running job on real MPI ranks (any size >= 3; make test runs 3 and 5): a run cut in
two by a checkpoint ends bit for bit where the uninterrupted run ends, and a run resumed under another
schedule (other servers, so other pieces; other workers and batches) continues the same training."""

import tempfile
from pathlib import Path

import numpy as np
import pytest

from hpcps.config.job import ExchangeConfig, Job, OptimizerConfig, TrainingConfig
from hpcps.config.schedule import Schedule, WorkerSpec
from hpcps.ps.checkpoint import latest_checkpoint, list_checkpoints
from hpcps.ps.checkpointer import CheckpointSettings

SGD = OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)
# eps 1e-5 as in test_exchange.py: Adam magnifies float32 rounding of a sum taken in another order by
# up to 1/eps on an element whose gradient cancels, which only the other-schedule test sees.
ADAM = OptimizerConfig("adam", lr=0.01, eps=1e-5)


def job_for(opt: OptimizerConfig, iterations: int, batches=(5, 17, 42), codec: str = "none", sync: str = "bsp") -> Job:
    # Pieces of 256 values: the digits MLP (hidden 32, 2410 parameters) is cut into 10 or more pieces.
    return Job("ckpt", "digits", opt, TrainingConfig(global_batch=sum(batches), iterations=iterations, seed=3,
                                                     sync=sync),
               model={"hidden": 32}, data={"test_fraction": 0.2},
               exchange=ExchangeConfig(codec=codec, bucket_mb=1 / 1024))


def schedule_a(size: int) -> Schedule:
    """Workers 0-2 (batches 5, 17, 42), servers on the last two ranks."""
    return Schedule((size - 2, size - 1), tuple(WorkerSpec(r, b) for r, b in enumerate((5, 17, 42))))


def schedule_b(size: int) -> Schedule:
    """Other servers (rank 0 and the middle one: other shards, other pieces) and other workers: two of
    them, the last ranks, with batches 40 and 24 (the same global batch)."""
    return Schedule((0, size // 2), (WorkerSpec(size - 2, 40), WorkerSpec(size - 1, 24)))


def shared_dir(comm) -> Path:
    """A scratch directory chosen on rank 0 and told to every rank."""
    name = tempfile.mkdtemp(prefix="hpcps-ckpt-") if comm.Get_rank() == 0 else None
    return Path(comm.bcast(name, root=0))


def run(comm, job, schedule, directory=None, resume_from=None, every=0):
    from hpcps.ps.runtime import run_training
    resume = None
    if resume_from is not None and comm.Get_rank() == 0:
        resume = latest_checkpoint(resume_from)[0]
    settings = CheckpointSettings(directory, every, 0.0, resume=resume, resuming=resume_from is not None)
    return run_training(comm, job, schedule, device="cpu", checkpoints=settings)


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("opt, codec, sync", [(SGD, "none", "bsp"), (ADAM, "none", "bsp"), (SGD, "int8", "bsp"),
                                              (ADAM, "sign", "bsp"), (SGD, "int8", "ssp")],
                         ids=["sgd-momentum", "adam", "sgd-momentum-int8", "adam-sign", "ssp0-sgd-momentum-int8"])
def test_cut_in_two_ends_bit_for_bit_where_the_straight_run_ends(opt, codec, sync):
    """With a lossy codec the workers' error-feedback residuals must come back too: without them the
    resumed pushes differ from the straight run's. ssp with staleness 0 is bsp bit for bit, through
    its own exchange, settling at each checkpoint and resuming from it."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    sched = schedule_a(comm.Get_size())
    d = shared_dir(comm)
    straight = run(comm, job_for(opt, 60, codec=codec, sync=sync), sched, d / "straight", every=20)
    first = run(comm, job_for(opt, 30, codec=codec, sync=sync), sched, d / "cut")
    second = run(comm, job_for(opt, 60, codec=codec, sync=sync), sched, d / "cut", resume_from=d / "cut", every=20)
    if comm.Get_rank() == 0:
        assert first.iterations == 30 and second.start_iteration == 30 and second.iterations == 60
        assert np.array_equal(second.final_params, straight.final_params)
        assert not np.array_equal(first.final_params, straight.final_params)
        assert [it for it, _ in list_checkpoints(d / "straight")] == [60, 40]
        assert [it for it, _ in list_checkpoints(d / "cut")] == [60, 40]
        a, b = latest_checkpoint(d / "straight")[0], latest_checkpoint(d / "cut")[0]
        assert sorted(a.optimizer_vectors) == (["momentum_buffer"] if opt.name == "sgd" else ["exp_avg", "exp_avg_sq"])
        for k, v in a.optimizer_vectors.items():
            assert np.array_equal(b.optimizer_vectors[k], v), k
        assert a.optimizer_scalars == b.optimizer_scalars
        assert np.array_equal(a.rng_torch, b.rng_torch)
        if codec != "none":
            assert a.residuals is not None and np.any(a.residuals != 0)
            assert np.array_equal(a.residuals, b.residuals)


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("opt", [SGD, ADAM], ids=["sgd-momentum", "adam"])
def test_resumed_under_another_schedule_continues_the_same_training(opt):
    """Both schedules train on the same union of samples each step, so the resumed run must end where
    the uninterrupted one does, to float32 rounding of sums taken in another order."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    d = shared_dir(comm)
    straight = run(comm, job_for(opt, 40), schedule_a(size))
    run(comm, job_for(opt, 20), schedule_a(size), d)
    resumed = run(comm, job_for(opt, 40, batches=(40, 24)), schedule_b(size), d, resume_from=d)
    if comm.Get_rank() == 0:
        assert resumed.start_iteration == 20
        np.testing.assert_allclose(resumed.final_params, straight.final_params, rtol=1e-4, atol=1e-5)
        ckpt = latest_checkpoint(d)[0]
        assert ckpt.iteration == 40 and ckpt.schedule["servers"] == [0, size // 2]
