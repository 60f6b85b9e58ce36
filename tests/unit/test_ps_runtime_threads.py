"""Whole training runs on three ranks that are threads of this process (tests/unit/thread_ranks.py).

Ranks 0 and 1 work (batches 1 and 1), ranks 1 and 2 serve: pieces travel as messages between ranks and
as copies on rank 1, and rank 2 only serves. The counting workload makes each result exact: worker i's
gradient is -K/k_i on its own block, which a server at SGD lr 1 turns into +1 on that block per step.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from hpcps.config.job import ExchangeConfig, Job, OptimizerConfig, TrainingConfig
from hpcps.config.schedule import Schedule, WorkerSpec
from tests.unit.thread_ranks import run_ranks

BLOCK = 24
BATCHES = (1, 1)
SCHEDULE = Schedule((1, 2), (WorkerSpec(0, 1), WorkerSpec(1, 1)))


class _ThreadRank(threading.local):
    rank = 0


_RANK = _ThreadRank()


class _World:
    @staticmethod
    def Get_rank() -> int:
        return _RANK.rank


class _MPI:
    COMM_WORLD = _World()


@pytest.fixture(autouse=True)
def _workload_sees_thread_ranks(monkeypatch):
    from tests.fixtures import counting_workload
    monkeypatch.setattr(counting_workload, "MPI", _MPI)


def job_for(sync="bsp", staleness=0, iterations=6, *, optimizer=None, exchange=None, log_every=2,
            eval_every=0) -> Job:
    data = {"ranks": [0, 1], "batches": list(BATCHES)}
    return Job("count3", "tests.fixtures.counting_workload:factory", optimizer or OptimizerConfig("sgd", lr=1.0),
               TrainingConfig(global_batch=sum(BATCHES), iterations=iterations, seed=3, log_every=log_every,
                              eval_every=eval_every, sync=sync, staleness=staleness),
               model={"block": BLOCK}, data=data, exchange=exchange or ExchangeConfig(bucket_mb=16 / 2 ** 20))


def train(job: Job, checkpoints=None, recorders=None, schedule: Schedule = SCHEDULE, emulation=None,
          timeout_s: float | None = None):
    from hpcps.ps.runtime import run_training
    logs: list[list[str]] = [[], [], []]

    def rank(comm):
        _RANK.rank = comm.Get_rank()
        r = comm.Get_rank()
        settings = checkpoints(r) if checkpoints is not None else None
        rec = recorders[r] if recorders is not None else None
        return run_training(comm, job, schedule, device="cpu", log=logs[r].append, checkpoints=settings,
                            recorder=rec, emulation=emulation)
    results = run_ranks(3, rank, **({"timeout_s": timeout_s} if timeout_s else {}))
    assert results[1] is None and results[2] is None
    return results[0], logs[0]


MODES = [("bsp", 0), ("ssp", 0), ("ssp", 1), ("asp", 0)]


def check_observed(sync: str, staleness: int, iterations: int, tol: float = 0.0) -> None:
    """What every step of both workers computed on (the counting workload's OBSERVED): under bsp and ssp
    a step at clock c sees every worker's updates of clocks before c - s and none of clock c or later;
    under asp values never exceed every push."""
    from tests.fixtures import counting_workload
    seen = list(counting_workload.OBSERVED)
    assert sorted(c for c, _, _ in seen) == sorted(list(range(iterations)) * 2)
    for c, lo, hi in seen:
        if sync == "asp":
            assert lo.min() >= -tol and hi.max() <= iterations + tol
        else:
            assert lo.min() >= c - staleness - tol and hi.max() <= c + tol, (c, lo, hi)


@pytest.mark.parametrize("sync, staleness", MODES)
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "after-step"])
def test_three_ranks_apply_every_push_once(sync, staleness, overlap):
    job = job_for(sync, staleness, exchange=ExchangeConfig(bucket_mb=16 / 2 ** 20, overlap=overlap))
    result, logs = train(job)
    np.testing.assert_array_equal(result.final_params, np.full(2 * BLOCK, 6.0, np.float32))
    check_observed(sync, staleness, 6)
    assert result.iterations == 6 and not result.stopped
    assert [h["iteration"] for h in result.history] == [2, 4, 6]
    mode = {"bsp": "bsp", "ssp": f"ssp (staleness {staleness})", "asp": "asp"}[sync]
    assert logs[0] == (f"count3: 3 ranks, 2 servers, 2 workers, {2 * BLOCK} parameters in 2 shards of 3 pieces, "
                       f"global batch 2, 6 iterations (0.09 epochs), {mode}" + (", overlapped" if overlap else ""))
    assert logs[1].startswith("rank processes: 0=pid ") and ", 2=pid " in logs[1]
    # each worker's loss: -(K/k) * (its block's sum) = -2 * 24 * (steps it saw) per sample, both summed
    if sync == "bsp":
        assert [h["loss"] for h in result.history] == pytest.approx([-24.0, -120.0, -216.0])
    assert all(h["samples_per_s"] > 0 for h in result.history)


@pytest.mark.parametrize("sync, staleness", MODES)
@pytest.mark.parametrize("codec, pull", [("int8", "bf16"), ("sign", "none"), ("topk", "fp16")])
def test_three_ranks_with_codecs(sync, staleness, codec, pull):
    from tests.unit.test_ps_runtime_self import Recorder
    recs = [Recorder(), Recorder(), Recorder()]
    job = job_for(sync, staleness, iterations=4,
                  exchange=ExchangeConfig(bucket_mb=16 / 2 ** 20, codec=codec, pull_codec=pull))
    result, _ = train(job, recorders=recs)
    assert result.final_params.shape == (2 * BLOCK,)
    if codec == "int8":
        check_observed(sync, staleness, 4, tol=0.05)
    if codec == "int8":
        np.testing.assert_allclose(result.final_params, np.full(2 * BLOCK, 4.0), rtol=1e-2)
    attrs = recs[0].run["attrs"]
    assert attrs["codec"] == codec and attrs["pull_codec"] == pull
    assert attrs["push_raw_nbytes_per_iteration"] > attrs["push_nbytes_per_iteration"] > 0
    if pull != "none":
        assert attrs["pull_nbytes_per_iteration"] * 2 == attrs["pull_raw_nbytes_per_iteration"]
    # messages between ranks are recorded as transfers, pieces of rank 1's own by copies
    ends = [{(kind, direction, peer) for _, _, kind, direction, _, peer, _, _ in rec.named("transfer")}
            for rec in recs]
    assert ends[0] == {("pull", "recv", 1), ("pull", "recv", 2), ("push", "send", 1), ("push", "send", 2)}
    assert ends[2] == {("pull", "send", 0), ("pull", "send", 1), ("push", "recv", 0), ("push", "recv", 1)}
    assert ends[1] - {("pull", "local", 1)} == {("pull", "recv", 2), ("pull", "send", 0), ("push", "recv", 0),
                                               ("push", "send", 2), ("push", "local", 1)}
    # shard 0 is rank 1's, shard 1 rank 2's
    assert {(t[5], t[4]) for t in recs[0].named("transfer")} == {(1, 0), (2, 1)}
    assert {t[4] for t in recs[2].named("transfer")} == {1}
    for it in range(4):         # worker 0 pushes and pulls each of the three pieces, every iteration
        assert [t[2] for t in recs[0].named("transfer") if t[1] == it].count("push") == 3
        if sync != "ssp":       # ssp's pulls are answers to what the worker's clock needs
            assert [t[2] for t in recs[0].named("transfer") if t[1] == it].count("pull") == 3
    if codec == "int8":         # 16-element pieces: 16 bytes and a scale; 16-bit pulls (and a version)
        assert {t[6] for t in recs[0].named("transfer") if t[2] == "push"} == {20}
        assert {t[6] for t in recs[0].named("transfer") if t[2] == "pull"} == ({32} if sync == "bsp" else {36})
        for rec in recs[1:]:    # and the servers record the pulls they send at the same size
            assert {t[6] for t in rec.named("transfer") if (t[2], t[3]) == ("pull", "send")} == (
                {32} if sync == "bsp" else {36})
    for rec in recs:            # each transfer names its piece of the plan
        assert {t[7] for t in rec.named("transfer")} <= {0, 1, 2}
    assert {t[7] for t in recs[0].named("transfer")} == {0, 1, 2}
    for rec in recs:            # copies of rank 1's own pieces: 16 float32 values each way
        assert {t[6] for t in rec.named("transfer") if t[3] == "local"} <= {64}
        assert all(isinstance(t[1], int) for t in rec.named("transfer"))
    assert {t[6] for t in recs[1].named("transfer") if t[3] == "local"} == {64}
    for rec in recs:            # how stale each piece a step used was: its clock less its version
        for _, it, shard, piece, version, st in rec.named("staleness"):
            if sync == "ssp":
                assert st == it - version and 0 <= st <= staleness
            else:                   # asp's versions count pushes applied, of every worker
                assert st >= 0 and version >= 0
            assert shard in (0, 1) and 0 <= piece < 3
    if sync == "ssp" and staleness == 0:
        assert recs[0].named("staleness") and {c[5] for c in recs[0].named("staleness")} == {0}
    for rec in recs:            # every phase's times are numbers (nan where the rank has no such phase)
        for c in rec.named("iteration"):
            assert all(isinstance(v, float) for v in c[1:]), c
            assert c[1] <= c[2] and c[7] <= c[8] and c[9] <= c[10]
    assert recs[2].run["is_worker"] is False and recs[2].run["is_server"] is True
    assert recs[0].run["is_server"] is False and recs[1].run["is_server"] is True


@pytest.mark.parametrize("sync, staleness", MODES[:3])
@pytest.mark.parametrize("opt", [OptimizerConfig("sgd", lr=0.5, momentum=0.9),
                                 OptimizerConfig("adam", lr=0.1, eps=1e-5)], ids=["momentum", "adam"])
def test_three_ranks_step_the_optimizer(sync, staleness, opt):
    from tests.unit.test_ps_runtime_self import reference
    result, _ = train(job_for(sync, staleness, iterations=4, optimizer=opt))
    # each block sees its worker's gradient, -2 weighted by 1/2: -1 a step (under asp each push is a
    # step of its own, in the order pushes arrive: momentum and Adam then depend on that order)
    np.testing.assert_allclose(result.final_params, reference(opt, 4, 2 * BLOCK), rtol=1e-6)


@pytest.mark.parametrize("sync, staleness", [("bsp", 0), ("ssp", 1), ("asp", 0)])
def test_three_ranks_checkpoint_and_resume(tmp_path: Path, sync, staleness):
    from hpcps.ps.checkpoint import list_checkpoints, read_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    from tests.unit.test_ps_runtime_self import reference
    opt = OptimizerConfig("adam", lr=0.1, eps=1e-5)
    job = job_for(sync, staleness, iterations=4, optimizer=opt,
                  exchange=ExchangeConfig(bucket_mb=16 / 2 ** 20, codec="int8"))
    result, logs = train(job, checkpoints=lambda r: CheckpointSettings(tmp_path, every=2, keep=3))
    assert [it for it, _ in list_checkpoints(tmp_path)] == [4, 2]
    two = read_checkpoint(list_checkpoints(tmp_path)[1][1])
    assert two.iteration == 2 and sorted(two.optimizer_vectors) == ["exp_avg", "exp_avg_sq"]
    assert two.residuals is not None and two.residuals.shape == (2, 2 * BLOCK)
    assert two.rng_torch.shape[0] == 3
    np.testing.assert_allclose(two.params, read_checkpoint(list_checkpoints(tmp_path)[1][1]).params)

    longer = job_for(sync, staleness, iterations=6, optimizer=opt,
                     exchange=ExchangeConfig(bucket_mb=16 / 2 ** 20, codec="int8"))
    from tests.unit.test_ps_runtime_self import Recorder
    recs = [Recorder(), Recorder(), Recorder()]
    resumed, logs = train(longer, checkpoints=lambda r: CheckpointSettings(None, resume=two if r == 0 else None,
                                                                          resuming=True), recorders=recs)
    assert resumed.start_iteration == 2 and resumed.iterations == 6
    if sync != "bsp":       # every piece starts at the version of 2 steps: ssp's rounds, asp's pushes of both workers
        versions = [c[4] for rec in recs for c in rec.named("staleness")]
        assert versions and min(versions) == (2 if sync == "ssp" else 2 * 2)
    assert any(m.startswith(f"resuming from {two.path} after iteration 2, under the same schedule; "
                            "error-feedback residuals restored worker by worker") for m in logs)
    whole, _ = train(job_for(sync, staleness, iterations=6, optimizer=opt,
                             exchange=ExchangeConfig(bucket_mb=16 / 2 ** 20, codec="int8")))
    if sync == "bsp":
        np.testing.assert_array_equal(resumed.final_params, whole.final_params)
    if sync != "asp":
        np.testing.assert_allclose(resumed.final_params, reference(opt, 6, 2 * BLOCK), rtol=0.05)
    assert (resumed.final_params > two.params).all()


def test_ranks_sleep_between_polls_when_they_outnumber_the_cores(monkeypatch):
    import os

    from hpcps.ps import exchange as ex_mod
    made = []
    init = ex_mod.Exchange.__init__

    def capture(self, *a, **kw):
        init(self, *a, **kw)
        made.append(self)
    monkeypatch.setattr(ex_mod.Exchange, "__init__", capture)
    train(job_for("bsp", iterations=2))
    assert len(made) == 3
    assert {e.sleep_wait for e in made} == {3 > len(os.sched_getaffinity(0))}
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    made.clear()
    train(job_for("bsp", iterations=2))
    assert {e.sleep_wait for e in made} == {False}


def test_three_ranks_evaluate_on_rank_0():
    result, logs = train(job_for("bsp", iterations=4, eval_every=2, log_every=4))
    assert [m for m in logs if " eval " in m] == ["iter     2/4  eval  test_loss 0.0000"]
    np.testing.assert_array_equal(result.final_params, np.full(2 * BLOCK, 4.0, np.float32))


def _one_rank(job: Job, checkpoints=None):
    from mpi4py import MPI

    from hpcps.ps.runtime import run_training
    logs: list[str] = []
    _RANK.rank = 0
    result = run_training(MPI.COMM_SELF, job, Schedule((0,), (WorkerSpec(0, 2),)), device="cpu",
                          log=logs.append, checkpoints=checkpoints)
    return result, logs


def test_resume_three_ranks_on_one_under_another_mode(tmp_path: Path):
    from hpcps.ps.checkpoint import list_checkpoints, read_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    opt = OptimizerConfig("sgd", lr=1.0, momentum=0.5)
    int8 = ExchangeConfig(bucket_mb=16 / 2 ** 20, codec="int8")
    train(job_for("bsp", iterations=2, optimizer=opt, exchange=int8),
          checkpoints=lambda r: CheckpointSettings(tmp_path, every=2))
    ckpt = read_checkpoint(list_checkpoints(tmp_path)[0][1])
    assert ckpt.schedule == {"n_ranks": 3, "servers": [1, 2], "workers": [[0, 1], [1, 1]],
                             "codecs": ["int8", "int8"], "sync": "bsp", "staleness": 0}
    result, logs = _one_rank(job_for("ssp", 1, iterations=4, optimizer=opt, exchange=int8),
                             CheckpointSettings(None, resume=ckpt, resuming=True))
    # one rank serves every piece itself: no encoder, no residual
    assert logs[0] == (f"resuming from {ckpt.path} after iteration 2, under another schedule (it ran 3 ranks, "
                       "servers [1, 2], 2 workers), written under sync bsp, going on under ssp (staleness 1); "
                       "error-feedback residuals dropped: no worker's codec keeps one now")
    assert result.start_iteration == 2 and np.isfinite(result.final_params).all()
    result, logs = _one_rank(job_for("bsp", iterations=4, optimizer=opt),
                             CheckpointSettings(None, resume=ckpt, resuming=True))
    assert (f"resuming from {ckpt.path} after iteration 2, under another schedule (it ran 3 ranks, servers "
            "[1, 2], 2 workers); error-feedback residuals dropped: no worker's codec keeps one now") in logs


def test_resume_one_rank_on_three(tmp_path: Path):
    from hpcps.ps.checkpoint import list_checkpoints, read_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    opt = OptimizerConfig("adam", lr=0.1, eps=1e-5)
    int8 = ExchangeConfig(bucket_mb=16 / 2 ** 20, codec="int8")
    _one_rank(job_for("bsp", iterations=2, optimizer=opt, exchange=int8), CheckpointSettings(tmp_path, every=2))
    ckpt = read_checkpoint(list_checkpoints(tmp_path)[0][1])
    assert ckpt.schedule["n_ranks"] == 1 and ckpt.residuals is None    # a rank serving itself encodes nothing
    assert float(ckpt.optimizer_scalars["step"]) == 2.0
    result, logs = train(job_for("asp", iterations=3, optimizer=opt, exchange=int8),
                         checkpoints=lambda r: CheckpointSettings(None, resume=ckpt if r == 0 else None,
                                                                  resuming=True))
    assert logs[0] == (f"resuming from {ckpt.path} after iteration 2, under another schedule (it ran 1 ranks, "
                       "servers [0], 1 workers), written under sync bsp, going on under asp")
    assert result.start_iteration == 2 and result.iterations == 3
    # Adam's state went to both servers: the third step continues from the saved moments
    assert (result.final_params > ckpt.params - 1e-6).all()


@pytest.mark.parametrize("sync, staleness", [("bsp", 0), ("ssp", 1), ("asp", 0)])
def test_three_ranks_stop_on_a_signal(tmp_path: Path, sync, staleness):
    from hpcps.ps.checkpoint import list_checkpoints
    from hpcps.ps.checkpointer import CheckpointSettings, StopSignals, flag_lag

    def settings(r):
        signals = StopSignals(r)
        signals.received = "SIGUSR1" if r == 0 else None
        return CheckpointSettings(tmp_path, signals=signals)
    result, logs = train(job_for(sync, staleness, iterations=30), checkpoints=settings)
    at = 1 + flag_lag(sync, staleness)
    assert result.stopped and result.iterations == at
    assert [it for it, _ in list_checkpoints(tmp_path)] == [at]
    # the progress rows of the iterations it ran (every log_every = 2) come back too
    assert [h["iteration"] for h in result.history] == list(range(2, at + 1, 2))
    np.testing.assert_array_equal(result.final_params, np.full(2 * BLOCK, float(at), np.float32))
    when = "the next iteration boundary" if at == 2 else f"the boundary {at - 1} iterations on"
    assert f"SIGUSR1: checkpoint at {when}, then stop" in logs


def test_resume_with_the_workers_in_another_order_shares_their_residuals(tmp_path: Path):
    from hpcps.ps.checkpoint import list_checkpoints, read_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    opt = OptimizerConfig("sgd", lr=1.0)
    int8 = ExchangeConfig(bucket_mb=16 / 2 ** 20, codec="int8")
    train(job_for("bsp", iterations=2, optimizer=opt, exchange=int8),
          checkpoints=lambda r: CheckpointSettings(tmp_path, every=2))
    ckpt = read_checkpoint(list_checkpoints(tmp_path)[0][1])
    assert ckpt.residuals is not None and ckpt.residuals.shape == (2, 2 * BLOCK)
    swapped = Schedule((2, 1), (WorkerSpec(1, 1), WorkerSpec(0, 1)))
    result, logs = train(job_for("bsp", iterations=4, optimizer=opt, exchange=int8), schedule=swapped,
                         checkpoints=lambda r: CheckpointSettings(tmp_path, every=2, resume=ckpt if r == 0 else None,
                                                                  resuming=True))
    assert logs[0] == (f"resuming from {ckpt.path} after iteration 2, under another schedule (it ran 3 ranks, "
                       "servers [1, 2], 2 workers); the 2 old workers' error-feedback residuals shared among the 2 "
                       "new workers whose codec keeps one")
    np.testing.assert_allclose(result.final_params, np.full(2 * BLOCK, 4.0), rtol=1e-2)
    four = read_checkpoint(list_checkpoints(tmp_path)[0][1])
    assert four.iteration == 4 and four.schedule["servers"] == [2, 1]
    assert four.schedule["workers"] == [[1, 1], [0, 1]]


@pytest.mark.parametrize("staleness", [0, 1])
def test_under_ssp_a_pull_is_traced_under_the_version_it_carries(staleness):
    """A pull under ssp carries the piece after round v (its version): the trace files it under v, so
    each remote piece's pulls are those of versions 1 .. iterations, once each."""
    from tests.unit.test_ps_runtime_self import Recorder
    recs = [Recorder(), Recorder(), Recorder()]
    train(job_for("ssp", staleness, iterations=5), recorders=recs)
    pulls: dict[int, list[int]] = {}
    for c in recs[1].calls:
        if c[0] == "transfer" and c[2] == "pull" and c[3] == "recv":
            pulls.setdefault(c[7], []).append(c[1])
    assert pulls and all(sorted(v) == [1, 2, 3, 4, 5] for v in pulls.values()), pulls


def test_the_same_workers_under_other_servers_are_another_schedule(tmp_path: Path):
    """A schedule is the same only when ranks, servers and workers all are: here only the servers moved,
    so generators start afresh (and the log says so), while each worker keeps its own residual."""
    from hpcps.ps.checkpoint import list_checkpoints, read_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    int8 = ExchangeConfig(bucket_mb=16 / 2 ** 20, codec="int8")
    job = job_for("bsp", iterations=2, optimizer=OptimizerConfig("sgd", lr=1.0), exchange=int8)
    train(job, checkpoints=lambda r: CheckpointSettings(tmp_path, every=2))
    ckpt = read_checkpoint(list_checkpoints(tmp_path)[0][1])
    one_server = Schedule((2,), SCHEDULE.workers)
    _, logs = train(job_for("bsp", iterations=3, optimizer=OptimizerConfig("sgd", lr=1.0), exchange=int8),
                    schedule=one_server,
                    checkpoints=lambda r: CheckpointSettings(None, resume=ckpt if r == 0 else None, resuming=True))
    assert logs[0] == (f"resuming from {ckpt.path} after iteration 2, under another schedule (it ran 3 ranks, "
                       "servers [1, 2], 2 workers); error-feedback residuals restored worker by worker")


@pytest.mark.parametrize("sync, staleness", MODES)
@pytest.mark.parametrize("transport", ["direct", "staged"])
@pytest.mark.parametrize("codec, pull", [("none", "none"), ("int8", "bf16")])
def test_three_ranks_with_device_buffers(monkeypatch, sync, staleness, transport, codec, pull):
    """The workers' buffers as a device's (tests/fakes.py): MPI reads and writes them directly, or
    through host mirrors ("staged"); lossy codecs encode and decode through host copies."""
    from hpcps.ps import runtime
    from tests.fakes import exchange_buffer
    made = []

    class Stream:
        synced = 0

        def synchronize(self):
            Stream.synced += 1

    def device_buffer(t, _transport):
        made.append(transport)
        buf = exchange_buffer(t.detach().numpy(), transport)
        buf.copies.stream = Stream()          # copies into a device run on a stream of their own
        return buf
    monkeypatch.setattr(runtime, "_exchange_buffer", device_buffer)
    job = job_for(sync, staleness, iterations=4,
                  exchange=ExchangeConfig(bucket_mb=16 / 2 ** 20, codec=codec, pull_codec=pull))
    result, _ = train(job)
    assert made == [transport] * 4          # params and grads of the two workers
    # under ssp and asp a staging buffer receives again only once the copies out of it are done
    assert (Stream.synced > 0) == (sync != "bsp")
    check_observed(sync, staleness, 4, tol=0.05 if codec != "none" else 0.0)
    if codec == "none":
        np.testing.assert_array_equal(result.final_params, np.full(2 * BLOCK, 4.0, np.float32))
    else:
        np.testing.assert_allclose(result.final_params, np.full(2 * BLOCK, 4.0), rtol=1e-2)


def test_ranks_other_than_0_learn_the_last_good_checkpoint_from_rank_0(monkeypatch, tmp_path: Path):
    from hpcps.ps import checkpointer as ck
    from hpcps.ps.checkpointer import CheckpointSettings
    made = {}
    original = ck.Checkpointer.__init__

    def init(self, comm, *a, **kw):
        original(self, comm, *a, **kw)
        made[comm.Get_rank()] = self
    monkeypatch.setattr(ck.Checkpointer, "__init__", init)
    train(job_for("bsp", iterations=3), checkpoints=lambda r: CheckpointSettings(tmp_path / "a"))
    # only the final checkpoint, after iteration 3: rank 0 knows it, the others have heard of none
    assert made[0].last_good == 3 and made[1].last_good is None and made[2].last_good is None
    made.clear()
    train(job_for("bsp", iterations=6), checkpoints=lambda r: CheckpointSettings(tmp_path / "b", every=2))
    # rank 0's word arrives one boundary later: at the last boundary, the one it had after iteration 5
    assert made[0].last_good == 6 and made[1].last_good == 4 and made[2].last_good == 4


@pytest.mark.parametrize("sync, staleness", [("bsp", 0), ("ssp", 1), ("asp", 0)])
def test_three_emulated_nodes_train_as_plain_ranks(sync, staleness):
    """Ranks 0 and 1 work on nodes a1 and b1, ranks 1 and 2 serve on b1 and b2: messages between
    emulated nodes wait on the emulated network (hpcps.emulate), copies on b1 do not."""
    from hpcps.cluster import Cluster, Node, NodeType
    from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker
    from hpcps.ps.runtime import Emulation
    from hpcps.sim.profile import WorkloadProfile
    from tests.unit.test_ps_runtime_self import Recorder
    fast = NodeType("fast", speed=2.0, cores=4, nic_gbps=8.0, latency_us=100.0, fixed_ms=3.0)
    slow = NodeType("slow", speed=0.5, cores=2, nic_gbps=1.6, latency_us=20.0)
    cluster = Cluster("c", (fast, slow), (Node("a1", fast), Node("b1", slow), Node("b2", slow)))
    placement = NodeSchedule((NodePlan("a1", False, (NodeWorker(1, 1),)), NodePlan("b1", True, (NodeWorker(1, 1),)),
                              NodePlan("b2", True, ()))).to_rank_schedule()
    assert placement.schedule.servers == SCHEDULE.servers and placement.rank_nodes == ("a1", "b1", "b2")
    emulation = Emulation(cluster, placement, WorkloadProfile("toy", 2 * BLOCK, 1e-3, 5e-4, 0.5, 0.9, 0.25, 1e6),
                          4.0, "reference")
    recs = [Recorder(), Recorder(), Recorder()]
    result, logs = train(job_for(sync, staleness, iterations=4), schedule=placement.schedule, emulation=emulation,
                         recorders=recs, timeout_s=60)
    np.testing.assert_array_equal(result.final_params, np.full(2 * BLOCK, 4.0, np.float32))
    costs = [m for m in logs if m.startswith("emulated step cost")]
    assert len(costs) == 1 and costs[0].startswith("emulated step cost (CPU time alone here, ms): a1 ")
    assert ", b1 " in costs[0]
    for r, rec in enumerate(recs):
        assert rec.run["attrs"]["emulation_network"] == "fabric"
        ends = {(t[2], t[3], t[5]) for t in rec.named("transfer")}
        if r == 0:
            assert ends == {("pull", "recv", 1), ("pull", "recv", 2), ("push", "send", 1), ("push", "send", 2)}


def test_a_non_finite_round_names_its_own_iteration_not_the_server_s(monkeypatch):
    """Under ssp a rank that works and serves runs ahead of a slow worker: when worker 0's NaN gradient
    of step 2 completes round 2 on rank 1, rank 1 is already past that iteration. The error names
    the round's iteration (3, one-based), not the one rank 1 has reached."""
    from dataclasses import replace

    import torch

    from hpcps.ps.checkpointer import TrainingDiverged
    from tests.fixtures import counting_workload
    original = counting_workload.CountingWorkload.loss

    def loss(self, model, batch):
        step = self.steps
        value, correct = original(self, model, batch)
        if step == 2 and _RANK.rank == 0:
            value = value + torch.sqrt(model.w * 0.0).sum()      # the same loss, a NaN gradient
        return value, correct
    monkeypatch.setattr(counting_workload.CountingWorkload, "loss", loss)
    job = job_for("ssp", 1, iterations=6)
    with pytest.raises(TrainingDiverged) as e:
        train(replace(job, data={**job.data, "delay_ms": [60.0, 0.0]}))
    assert str(e.value) == ("non-finite aggregated gradient in piece 0 (elements 0..15, 16 not finite) in "
                            "iteration 3 on rank 1; no checkpoint (give --checkpoint DIR)")


@pytest.mark.parametrize("sync, staleness", MODES)
def test_pushes_wait_in_staging_until_their_device_copy_is_done(monkeypatch, sync, staleness):
    """A staged worker's gradient copies to the host land, and report done, only when asked a second
    time (as a CUDA event that has not passed yet): each push waits among the staged ones and leaves on
    a later poll, once its data is there, every one of them, with its own iteration."""
    from hpcps.comm.buffers import SyncCopies
    from hpcps.ps import runtime
    from tests.fakes import exchange_buffer
    asked: list[int] = []

    class LateCopies(SyncCopies):
        """The copy to the host happens when done() is asked the second time, not before."""
        def to_host(self, dev, host):
            return [0, dev, host]                # a handle: how often done() was asked, and the copy

        def done(self, handle):
            handle[0] += 1
            asked.append(handle[0])
            if handle[0] == 2:
                super().to_host(handle[1], handle[2])
            return handle[0] > 1

    def device_buffer(t, _transport):
        buf = exchange_buffer(t.detach().numpy(), "staged")
        buf.copies = LateCopies(buf.copies._to_host, buf.copies._to_device)
        return buf
    monkeypatch.setattr(runtime, "_exchange_buffer", device_buffer)
    result, _ = train(job_for(sync, staleness, iterations=4))
    assert 1 in asked and 2 in asked            # copies were found not done, then done
    check_observed(sync, staleness, 4)
    np.testing.assert_array_equal(result.final_params, np.full(2 * BLOCK, 4.0, np.float32))
