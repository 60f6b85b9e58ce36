"""Bounded staleness (ssp) and asynchronous training (asp) on real MPI ranks.

The property tests need 5 ranks: four workers (ranks 0-3, batches 1, 2, 4, 1) and two servers, one of
them on a worker's rank (3) and one alone (4), so that pieces travel both as messages and as copies.
Worker 0 is slow and every step sleeps a seeded random time, so that the others run ahead."""

import os

import numpy as np
import pytest

from hpcps.config.job import ExchangeConfig, Job, OptimizerConfig, TrainingConfig
from hpcps.config.schedule import Schedule, WorkerSpec
from tests.mpi.test_exchange import exactness_schedule, job_for

COUNT_BATCHES = (1, 2, 4, 1)
STEPS = 14


def counting_job(sync: str, staleness: int, seed: int, overlap: bool = True) -> Job:
    data = {"ranks": list(range(len(COUNT_BATCHES))), "batches": list(COUNT_BATCHES),
            "delay_ms": [40.0, 6.0, 6.0, 6.0]}
    # 16-element pieces: 10 pieces in two shards, so that pieces of one block arrive at different times
    return Job("count", "tests.fixtures.counting_workload:factory", OptimizerConfig("sgd", lr=1.0),
               TrainingConfig(global_batch=sum(COUNT_BATCHES), iterations=STEPS, seed=seed, log_every=4,
                              sync=sync, staleness=staleness),
               model={"block": 40}, data=data, exchange=ExchangeConfig(bucket_mb=64 / 2 ** 20, overlap=overlap))


def counting_schedule() -> Schedule:
    return Schedule((3, 4), tuple(WorkerSpec(r, k) for r, k in enumerate(COUNT_BATCHES)))


@pytest.mark.mpi(min_size=5)
@pytest.mark.parametrize("sync, staleness", [("bsp", 0), ("ssp", 0), ("ssp", 1), ("ssp", 3), ("asp", 0)])
@pytest.mark.parametrize("seed", [1, 2])
def test_every_pull_reflects_the_updates_the_mode_promises(sync, staleness, seed):
    from mpi4py import MPI

    from hpcps.ps.runtime import run_training
    from tests.fixtures import counting_workload
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    result = run_training(comm, counting_job(sync, staleness, seed), counting_schedule(), device="cpu")
    seen = list(counting_workload.OBSERVED) if rank < len(COUNT_BATCHES) else []
    problems, stale = [], 0
    previous = np.zeros(len(COUNT_BATCHES))
    for clock, lo, hi in seen:
        if sync in ("bsp", "ssp"):
            # every worker's updates of rounds 0 .. clock - s - 1 are in; none of a round after clock - 1
            if lo.min() < clock - staleness or hi.max() > clock:
                problems.append(f"rank {rank} step {clock}: blocks between {lo} and {hi}")
            stale += int(lo.min() < clock)
        else:
            # asp promises no bound, but values only move forward and never count more than every push
            if (lo < previous).any() or hi.max() > STEPS:
                problems.append(f"rank {rank} step {clock}: blocks between {lo} and {hi} after {previous}")
            previous = lo
    if rank < len(COUNT_BATCHES):
        assert [c for c, _, _ in seen] == list(range(STEPS))
    problems = sum(comm.allgather(problems), [])
    assert not problems, problems[:5]
    stale = sum(comm.allgather(stale))
    if sync == "ssp" and staleness > 0:
        assert stale > 0, "no step ran ahead: the test would not see a violation of the bound"
    if sync == "bsp" or staleness == 0:
        assert stale == 0
    if rank == 0:
        # Every push of every worker applied exactly once: each block counts STEPS updates, exactly.
        np.testing.assert_array_equal(result.final_params, np.full(result.final_params.shape, STEPS, np.float32))


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("opt", [OptimizerConfig("sgd", lr=0.2, momentum=0.9, weight_decay=1e-3),
                                 OptimizerConfig("adam", lr=0.01, eps=1e-5)], ids=["sgd", "adam"])
@pytest.mark.parametrize("exchange", [ExchangeConfig(), ExchangeConfig(bucket_mb=1 / 1024),
                                      ExchangeConfig(bucket_mb=1 / 1024, overlap=False),
                                      ExchangeConfig(bucket_mb=1 / 1024, codec="int8", pull_codec="bf16")],
                         ids=["one-piece", "pieces", "pieces-no-overlap", "pieces-int8-bf16-pulls"])
def test_ssp_with_staleness_0_is_bsp_bit_for_bit(opt, exchange):
    from dataclasses import replace

    from mpi4py import MPI

    from hpcps.ps.runtime import run_training
    comm = MPI.COMM_WORLD
    job = job_for(opt, 4, exchange)
    schedule = exactness_schedule(comm.Get_size())
    device = os.environ.get("HPCPS_TEST_DEVICE", "cpu")     # benchmarks/gpu_check.sh runs it on a GPU
    bsp = run_training(comm, job, schedule, device=device)
    ssp = run_training(comm, replace(job, training=replace(job.training, sync="ssp", staleness=0)), schedule,
                       device=device)
    if comm.Get_rank() == 0:
        assert bsp.final_params.tobytes() == ssp.final_params.tobytes()
        assert bsp.final_metrics == ssp.final_metrics


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("sync, staleness", [("ssp", 2), ("asp", 0)])
def test_stale_modes_train_with_evaluation_during_training(sync, staleness):
    """Evaluations and progress reports during training gather and reduce without blocking the exchange."""
    from dataclasses import replace

    from mpi4py import MPI

    from hpcps.ps.runtime import run_training
    comm = MPI.COMM_WORLD
    job = job_for(OptimizerConfig("sgd", lr=0.1), 12, ExchangeConfig(bucket_mb=1 / 1024))
    job = replace(job, training=replace(job.training, sync=sync, staleness=staleness, eval_every=4, log_every=3))
    result = run_training(comm, job, exactness_schedule(comm.Get_size()), device="cpu")
    if comm.Get_rank() == 0:
        assert [row["iteration"] for row in result.history] == [3, 6, 9, 12]
        assert np.isfinite(result.final_params).all()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("transport", ["direct", "staged"])
@pytest.mark.parametrize("mode", ["ssp", "asp"])
def test_stale_exchange_with_device_buffers(transport, mode):
    """Workers whose buffers are device arrays (faked over host memory) stage pulls and copy them in."""
    from mpi4py import MPI

    from hpcps.ps.plan import MessagePlan
    from hpcps.ps.stale import StaleExchange, serve_pieces
    from tests.fakes import exchange_buffer
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    n, steps, s = 1000, 3, (1 if mode == "ssp" else 0)
    servers = (0, size - 1)
    batches = [r + 1 for r in range(size)]
    plan = MessagePlan.build(n, servers, list(range(size)), bucket_bytes=256)
    truth = np.linspace(-1, 1, n, dtype=np.float32)
    served = serve_pieces(mode, s, plan, rank, truth, batches, OptimizerConfig("sgd", lr=1.0), None)

    params_mem, grads_mem = truth.copy(), np.full(n, float(rank + 1), np.float32)
    ex = StaleExchange(comm, plan, steps, mode=mode, staleness=s, params=exchange_buffer(params_mem, transport),
                       grads=exchange_buffer(grads_mem, transport), served=served)
    ex.start()
    k = np.array(batches, dtype=np.float64)
    mean_push = float((k * np.arange(1, size + 1)).sum() / k.sum())
    for c in range(steps):
        ex.begin_clock(c)
        if mode == "ssp":
            # every piece holds a version between c - s and c
            for p in plan.pieces:
                v = np.rint((truth[p.start:p.stop] - params_mem[p.start:p.stop]) / mean_push)
                assert (v == ex.have[p.index]).all() and max(0, c - s) <= ex.have[p.index] <= c
        ex.begin_pushes(c)
        for p in plan.push_order():
            ex.push(p.index)
        ex.wait_until(ex.pushes_done)
    ex.drain()
    final = ex.gather_params(n)
    if rank == 0:
        np.testing.assert_allclose(final, truth - steps * mean_push, rtol=1e-5, atol=1e-5)


def _checkpointed_counting(comm, sync, staleness, seed, directory, *, every=0, every_s=0.0, resume_from=None,
                           steps=STEPS):
    from dataclasses import replace

    from hpcps.ps.checkpoint import latest_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    from hpcps.ps.runtime import run_training
    from tests.fixtures import counting_workload
    job = counting_job(sync, staleness, seed)
    job = replace(job, training=replace(job.training, iterations=steps))
    resume = latest_checkpoint(resume_from)[0] if resume_from is not None and comm.Get_rank() == 0 else None
    settings = CheckpointSettings(directory, every, every_s, resume=resume, resuming=resume_from is not None,
                                  keep=1000)
    result = run_training(comm, job, counting_schedule(), device="cpu", checkpoints=settings)
    return result, list(counting_workload.OBSERVED)


def _bound_problems(sync, staleness, seen, start, rank, steps):
    """The pull property of test_every_pull_reflects_the_updates_the_mode_promises, for clocks from start
    in a run of `steps` steps in all."""
    problems, previous = [], np.full(len(COUNT_BATCHES), float(start))
    for step, lo, hi in seen:
        clock = start + step
        if sync == "ssp" and (lo.min() < clock - staleness or hi.max() > clock):
            problems.append(f"rank {rank} step {clock}: blocks between {lo} and {hi}")
        if sync == "asp" and ((lo < previous).any() or hi.max() > steps):
            problems.append(f"rank {rank} step {clock}: blocks between {lo} and {hi} after {previous}")
        previous = lo if sync == "asp" else previous
    return problems


@pytest.mark.mpi(min_size=5)
@pytest.mark.parametrize("sync, staleness", [("ssp", 0), ("ssp", 2), ("asp", 0)])
def test_stale_checkpoints_hold_exactly_the_pushes_before_them_and_resume(sync, staleness):
    """Checkpoints under ssp and asp, while worker 0 lags: each is taken where every worker's pushes of
    the steps before it are applied and none after (every block counts exactly its iteration), both
    at a fixed interval and when rank 0 asks for one (its clock, here at every boundary: the request
    reaches every rank flag_lag boundaries on, the same boundary everywhere, while the ranks waiting
    for it keep serving the others). A run resumed from the middle one ends with every push applied
    exactly once (the servers' clocks and the workers' versions restored, or the run hangs or counts
    wrong), the pulls keeping the mode's bound across the resume."""
    from mpi4py import MPI

    from hpcps.ps.checkpoint import list_checkpoints, read_checkpoint
    from hpcps.ps.checkpointer import flag_lag
    from tests.mpi.test_checkpoint_resume import shared_dir
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    d = shared_dir(comm)
    lag = flag_lag(sync, staleness)
    steps = lag + 12                             # asp's lag (16) needs a longer run to see asked-for checkpoints
    runs = {"interval": dict(every=5), "asked": dict(every_s=1e-9)}
    for name, how in runs.items():
        result, seen = _checkpointed_counting(comm, sync, staleness, 1, d / name, steps=steps, **how)
        problems = sum(comm.allgather(_bound_problems(sync, staleness, seen, 0, rank, steps)), [])
        assert not problems, problems[:5]
        if rank == 0:
            held = sorted(it for it, _ in list_checkpoints(d / name))
            want = (list(range(5, steps, 5)) + [steps] if name == "interval" else list(range(lag + 1, steps + 1)))
            assert held == want, (name, held)
            for it, path in list_checkpoints(d / name):
                ckpt = read_checkpoint(path)
                assert np.array_equal(ckpt.params, np.full(ckpt.params.shape, it, np.float32)), (name, it)
                assert ckpt.schedule["sync"] == sync and ckpt.schedule["staleness"] == staleness
            np.testing.assert_array_equal(result.final_params, np.full(result.final_params.shape, steps, np.float32))
    # Resume from the checkpoint after 10 (the newer ones set aside), and run to the end again.
    if rank == 0:
        for it, path in list_checkpoints(d / "interval"):
            if it > 10:
                path.unlink()
    resumed, seen = _checkpointed_counting(comm, sync, staleness, 1, d / "interval", every=5,
                                           resume_from=d / "interval", steps=steps)
    problems = sum(comm.allgather(_bound_problems(sync, staleness, seen, 10, rank, steps)), [])
    assert not problems, problems[:5]
    if rank < len(COUNT_BATCHES):
        assert [s for s, _, _ in seen] == list(range(steps - 10))
    if rank == 0:
        assert resumed.start_iteration == 10
        np.testing.assert_array_equal(resumed.final_params, np.full(resumed.final_params.shape, steps, np.float32))
