"""Whole training runs in this process, on one rank (MPI.COMM_SELF) that both serves and works.

The MPI suites run the same code on several ranks; here one rank runs it under pytest, so that the
unit tests check the runtime, the exchanges (bsp, ssp, asp), the servers' steps and the checkpoints
end to end: the counting workload (tests/fixtures/counting_workload.py) makes every result exact.
With one worker of batch k = K its gradient is -1 on every parameter, so each iteration applies the
optimizer to a gradient of -1 on every element.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcps.config.job import ExchangeConfig, Job, OptimizerConfig, TrainingConfig
from hpcps.config.schedule import Schedule, WorkerSpec

BLOCK = 40


def counting_job(sync="bsp", staleness=0, iterations=6, *, batch=2, log_every=2, eval_every=0,
                 optimizer=None, exchange=None, name="count") -> Job:
    return Job(name, "tests.fixtures.counting_workload:factory", optimizer or OptimizerConfig("sgd", lr=1.0),
               TrainingConfig(global_batch=batch, iterations=iterations, seed=1, log_every=log_every,
                              eval_every=eval_every, sync=sync, staleness=staleness),
               model={"block": BLOCK}, data={"ranks": [0], "batches": [batch]},
               exchange=exchange or ExchangeConfig(bucket_mb=64 / 2 ** 20))


def one_rank() -> Schedule:
    return Schedule((0,), (WorkerSpec(0, 2),))


def train(job: Job, **kw):
    """run_training on MPI.COMM_SELF, in a thread of its own: a run that does not end in time fails the
    test instead of holding it (tests/unit/thread_ranks.py)."""
    from mpi4py import MPI

    from hpcps.ps.runtime import run_training
    from tests.unit.thread_ranks import run_ranks
    logs: list[str] = []
    [result] = run_ranks(1, lambda _comm: run_training(MPI.COMM_SELF, job, one_rank(), device="cpu",
                                                       log=logs.append, **kw))
    return result, logs


def reference(opt: OptimizerConfig, steps: int, n: int = BLOCK) -> np.ndarray:
    """The parameters after `steps` steps of opt on a gradient of -1 everywhere, starting at 0."""
    from hpcps.ps.optim import make_optimizer
    p = torch.nn.Parameter(torch.zeros(n))
    o = make_optimizer(opt, [p])
    for _ in range(steps):
        p.grad = torch.full((n,), -1.0)
        o.step()
    return p.detach().numpy()


class Recorder:
    """Records what the runtime tells a trace recorder."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.run: dict = {}
        self.while_waiting = None

    def begin_run(self, **kw):
        self.run = kw
        self.calls.append(("begin_run",))

    def begin_iteration(self, it):
        self.calls.append(("begin_iteration", it))

    def iteration(self, *args):
        self.calls.append(("iteration", *args))

    def phase(self, name, t0, t1):
        assert t0 <= t1
        self.calls.append(("phase", name, t0, t1))

    def transfer(self, meta, t0, t1, iteration=None):
        assert t0 <= t1
        self.calls.append(("transfer", iteration, meta.kind, meta.direction, meta.shard, meta.peer, meta.nbytes,
                           meta.piece))

    def staleness(self, iteration, shard, piece, version, staleness):
        self.calls.append(("staleness", iteration, shard, piece, version, staleness))

    def end_run(self):
        self.calls.append(("end_run",))

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


MODES = [("bsp", 0), ("ssp", 0), ("ssp", 2), ("asp", 0)]


@pytest.mark.parametrize("sync, staleness", MODES)
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "after-step"])
def test_every_mode_applies_every_push_once(sync, staleness, overlap):
    from tests.fixtures import counting_workload
    job = counting_job(sync, staleness, iterations=6,
                       exchange=ExchangeConfig(bucket_mb=64 / 2 ** 20, overlap=overlap))
    rec = Recorder()
    result, logs = train(job, recorder=rec)
    np.testing.assert_array_equal(result.final_params, np.full(BLOCK, 6.0, np.float32))
    for c in rec.named("iteration"):        # pushes start during the step when overlapped, else after it
        t_begin, c1, push0 = c[1], c[6], c[7]
        assert push0 < c1 if overlap else t_begin <= c1 <= push0
        assert push0 <= c[9] < c[10]        # the rank's aggregations: after the first push, and they take time
        if overlap:                         # its own pieces handed over during the step: pushed before it ends
            assert c[8] < c1
    assert result.iterations == 6 and result.start_iteration == 0
    assert not result.stopped and result.checkpoint is None
    assert result.final_metrics == {"test_loss": 0.0}
    assert result.wall_s > 0 and result.samples_per_s == pytest.approx(6 * 2 / result.wall_s)
    # each step saw every update of the steps before it, none later (one worker: nothing to wait for)
    seen = [(c, lo.min(), hi.max()) for c, lo, hi in counting_workload.OBSERVED]
    assert [c for c, _, _ in seen[:6]] == list(range(6))
    for c, lo, hi in seen[:6]:
        assert c - staleness <= lo <= hi <= c
    if sync == "bsp":
        assert [(lo, hi) for _, lo, hi in seen[:6]] == [(c, c) for c in range(6)]
    # progress lines every log_every iterations: loss is -(sum of the parameters) per sample
    assert [h["iteration"] for h in result.history] == [2, 4, 6]
    for h in result.history:
        assert h["epoch"] == pytest.approx(h["iteration"] / (64 * 2 / 2))
        assert h["train_accuracy"] == 0.0
        assert h["samples_per_s"] > 0
    # steps 1-2 saw 0 and 1 everywhere: loss -(0 + 1) * 40 / 2 per sample, averaged over the two steps
    assert [h["loss"] for h in result.history] == pytest.approx([-20.0, -100.0, -180.0])
    mode = {"bsp": "bsp", "ssp": f"ssp (staleness {staleness})", "asp": "asp"}[sync]
    assert logs[0] == (f"count: 1 ranks, 1 servers, 1 workers, {BLOCK} parameters in 1 shards of 3 pieces, "
                       f"global batch 2, 6 iterations (0.09 epochs), {mode}" + (", overlapped" if overlap else ""))
    assert logs[1].startswith("rank processes: 0=pid ")
    iters = [m for m in logs if m.startswith("iter ")]
    assert [m.split()[1] for m in iters] == ["2/6", "4/6", "6/6"]
    assert iters[0].startswith("iter     2/6  epoch  0.03  loss -20.0000  train-acc 0.000 ")
    assert iters[0].endswith(" samples/s")
    assert logs[-1].startswith("done: 6 iterations in ") and logs[-1].endswith("test_loss 0.0000")


@pytest.mark.parametrize("sync, staleness", MODES)
@pytest.mark.parametrize("opt", [OptimizerConfig("sgd", lr=0.5, momentum=0.9, weight_decay=0.01),
                                 OptimizerConfig("adam", lr=0.1, eps=1e-5)], ids=["momentum", "adam"])
def test_the_servers_step_is_the_optimizer_on_the_pushed_gradient(sync, staleness, opt):
    result, _ = train(counting_job(sync, staleness, iterations=5, optimizer=opt))
    np.testing.assert_allclose(result.final_params, reference(opt, 5), rtol=1e-6)


@pytest.mark.parametrize("sync, staleness", MODES)
@pytest.mark.parametrize("codec, pull", [("int8", "none"), ("bf16", "bf16"), ("fp16", "fp16"), ("sign", "none"),
                                         ("topk", "none")])
def test_codecs_in_a_run(sync, staleness, codec, pull):
    rec = Recorder()
    job = counting_job(sync, staleness, iterations=4, exchange=ExchangeConfig(bucket_mb=64 / 2 ** 20, codec=codec,
                                                                                pull_codec=pull))
    result, _ = train(job, recorder=rec)
    # a gradient of -1 everywhere survives each codec: each step adds 1 (int8's scale rounds)
    np.testing.assert_allclose(result.final_params, np.full(BLOCK, 4.0), rtol=1e-5)
    attrs = rec.run["attrs"]
    assert attrs["codec"] == codec and attrs["pull_codec"] == pull
    assert attrs["worker_codecs"] == f'["{codec}"]'
    # the one rank serves every piece it works on: no byte crosses the network
    assert attrs["push_raw_nbytes_per_iteration"] == attrs["push_nbytes_per_iteration"] == 0
    assert attrs["pull_raw_nbytes_per_iteration"] == attrs["pull_nbytes_per_iteration"] == 0


@pytest.mark.parametrize("sync, staleness", MODES)
def test_the_trace_recorder_hears_every_phase(sync, staleness):
    rec = Recorder()
    result, _ = train(counting_job(sync, staleness, iterations=4), recorder=rec)
    assert rec.calls[0] == ("begin_run",) and rec.calls[-1] == ("end_run",)
    assert rec.run["device"] == "cpu" and rec.run["threads"] == 1 and rec.run["batch"] == 2
    assert rec.run["is_server"] is True and rec.run["is_worker"] is True
    assert len(rec.run["shards"]) == 1
    attrs = rec.run["attrs"]
    assert attrs["job_name"] == "count" and attrs["workload"] == "tests.fixtures.counting_workload:factory"
    assert attrs["global_batch"] == 2 and attrs["iterations_planned"] == 4 and attrs["n_params"] == BLOCK
    assert attrs["sync"] == sync and attrs["staleness"] == staleness and attrs["overlap"] == 1
    assert attrs["pieces"] == 3 and attrs["codec"] == "none" and attrs["pull_codec"] == "none"
    assert attrs["push_nbytes_per_iteration"] == attrs["push_raw_nbytes_per_iteration"] == 0
    assert attrs["pull_nbytes_per_iteration"] == attrs["pull_raw_nbytes_per_iteration"] == 0
    assert [c[1] for c in rec.named("begin_iteration")] == [0, 1, 2, 3]
    iterations = rec.named("iteration")
    assert len(iterations) == 4
    for c in iterations:
        pull0, pull1, data0, data1, c0, c1, push0, push1, agg0, agg1, loss = c[1:]
        assert pull0 <= pull1 and data0 <= data1 <= c0 <= c1 and push0 <= push1 and agg0 <= agg1
        assert math.isfinite(loss)
    assert [c[-1] for c in iterations] == [0.0, -40.0, -80.0, -120.0]
    assert all(c[7] < c[6] for c in iterations)          # overlapped: the first push leaves during the step
    assert [c[1] for c in rec.named("phase")] == ["report", "report"]
    if sync == "bsp":
        assert rec.while_waiting is None
    else:
        assert rec.while_waiting is not None


def test_evaluation_every_few_iterations_logs_and_leaves_the_parameters(monkeypatch):
    from tests.fixtures import counting_workload
    monkeypatch.setattr(counting_workload.CountingWorkload, "evaluate",
                        lambda self, model: {"test_loss": 0.0, "test_accuracy": 0.5})
    result, logs = train(counting_job("bsp", iterations=6, eval_every=2, log_every=3))
    evals = [m for m in logs if " eval " in m]
    # after iterations 2 and 4; not after the last (the final evaluation covers it)
    assert evals == ["iter     2/6  eval  test_loss 0.0000  test_accuracy 0.5000",
                     "iter     4/6  eval  test_loss 0.0000  test_accuracy 0.5000"]
    assert logs[-1].endswith(" samples/s; test_loss 0.0000  test_accuracy 0.5000")
    assert result.final_metrics == {"test_loss": 0.0, "test_accuracy": 0.5}
    assert [h["iteration"] for h in result.history] == [3, 6]
    np.testing.assert_array_equal(result.final_params, np.full(BLOCK, 6.0, np.float32))


@pytest.mark.parametrize("sync, staleness", [("bsp", 0), ("ssp", 1), ("asp", 0)])
def test_checkpoints_then_resume_go_on_where_the_run_left(tmp_path: Path, sync, staleness):
    from hpcps.ps.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    opt = OptimizerConfig("adam", lr=0.1, eps=1e-5)
    job = counting_job(sync, staleness, iterations=4, optimizer=opt)
    rec = Recorder()
    result, logs = train(job, checkpoints=CheckpointSettings(tmp_path, every=2, keep=5), recorder=rec)
    np.testing.assert_allclose(result.final_params, reference(opt, 4), rtol=1e-6)
    assert [c[1] for c in rec.named("phase")].count("checkpoint") == 2        # traced, after 2 and 4
    written = list_checkpoints(tmp_path)           # newest first
    assert [it for it, _ in written] == [4, 2]
    assert result.checkpoint == str(written[0][1])
    saved = [m for m in logs if m.startswith("checkpoint ")]
    assert len(saved) == 2 and " after iteration 2: " in saved[0] and " after iteration 4: " in saved[1]
    two = read_checkpoint(written[1][1])
    assert two.iteration == 2
    np.testing.assert_allclose(two.params, reference(opt, 2), rtol=1e-6)
    assert sorted(two.optimizer_vectors) == ["exp_avg", "exp_avg_sq"]
    assert two.schedule["sync"] == sync and two.schedule["staleness"] == staleness
    assert two.rng_torch is not None and two.rng_torch.shape[0] == 1

    # go on from iteration 2 to 6: the same as 6 iterations in one go
    longer = counting_job(sync, staleness, iterations=6, optimizer=opt)
    resumed, logs = train(longer, checkpoints=CheckpointSettings(None, resume=two, resuming=True))
    np.testing.assert_allclose(resumed.final_params, reference(opt, 6), rtol=1e-5)
    assert resumed.start_iteration == 2 and resumed.iterations == 6
    assert resumed.checkpoint == str(two.path)
    assert f"resuming from {two.path} after iteration 2, under the same schedule" in logs
    assert ", from iteration 2" in logs[0] or any(", from iteration 2" in m for m in logs)
    assert logs[-1].startswith("done: 4 iterations (3-6) in ")
    assert latest_checkpoint(tmp_path)[0].iteration == 4


def test_resuming_past_the_end_is_refused(tmp_path: Path):
    from hpcps.config.errors import ConfigError
    from hpcps.ps.checkpoint import list_checkpoints, read_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    train(counting_job("bsp", iterations=4), checkpoints=CheckpointSettings(tmp_path, every=4))
    ckpt = read_checkpoint(list_checkpoints(tmp_path)[0][1])
    with pytest.raises(ConfigError, match="past this run's 3 iterations"):
        train(counting_job("bsp", iterations=3), checkpoints=CheckpointSettings(None, resume=ckpt, resuming=True))


@pytest.mark.parametrize("sync, staleness", [("bsp", 0), ("ssp", 0), ("asp", 0)])
def test_a_stop_signal_checkpoints_and_stops(tmp_path: Path, sync, staleness):
    from hpcps.ps.checkpoint import list_checkpoints
    from hpcps.ps.checkpointer import CheckpointSettings, StopSignals, flag_lag
    signals = StopSignals(0)
    signals.received = "SIGTERM"
    result, logs = train(counting_job(sync, staleness, iterations=40),
                         checkpoints=CheckpointSettings(tmp_path, signals=signals))
    # rank 0 posts STOP at the first boundary; every rank acts on it lag boundaries later
    at = 1 + flag_lag(sync, staleness)
    assert result.stopped and result.iterations == at and result.start_iteration == 0
    assert [it for it, _ in list_checkpoints(tmp_path)] == [at]
    assert result.checkpoint == str(list_checkpoints(tmp_path)[0][1])
    np.testing.assert_array_equal(result.final_params, np.full(BLOCK, float(at), np.float32))
    assert result.final_metrics == {} and result.sample_text is None
    assert logs[-1] == (f"stopped after iteration {at} of 40 (SIGTERM): last good checkpoint: "
                        f"{list_checkpoints(tmp_path)[0][1]} (after iteration {at}); "
                        f"continue with --resume {tmp_path}")


def test_a_workload_s_closing_sample_is_the_last_line(monkeypatch):
    """A workload that ends with a sample of what it learnt (charlm's generated text) has it logged, quoted,
    after the closing figures."""
    from tests.fixtures import counting_workload
    monkeypatch.setattr(counting_workload.CountingWorkload, "finish", lambda self, model: "it's\nlearnt")
    result, logs = train(counting_job(iterations=2))
    assert result.sample_text == "it's\nlearnt"
    assert logs[-2].startswith("done: ") and logs[-1] == "sample: \"it's\\nlearnt\""


def test_total_iterations():
    from hpcps.ps.runtime import total_iterations
    job = counting_job(iterations=7)
    assert total_iterations(job, 100) == 7
    from dataclasses import replace
    by_epochs = replace(job, training=replace(job.training, iterations=0, epochs=1.5))
    assert total_iterations(by_epochs, 10) == 15
    assert total_iterations(replace(job, training=replace(job.training, iterations=0, epochs=0.01)), 10) == 1
    assert total_iterations(replace(job, training=replace(job.training, iterations=0, epochs=0.25)), 10) == 3


def test_a_job_given_in_epochs_runs_its_epochs_worth_of_iterations():
    """run_training turns training.epochs into iterations with the partition's iterations per epoch
    (64 here, as the progress lines' epochs in test_every_mode_applies_every_push_once show)."""
    from dataclasses import replace
    job = counting_job()
    by_epochs = replace(job, training=replace(job.training, iterations=0, epochs=0.05))
    result, logs = train(by_epochs)
    assert result.iterations == 4                                   # ceil(0.05 * 64)
    assert "global batch 2, 4 iterations (0.06 epochs), bsp" in logs[0]


def test_pick_device_without_a_gpu(monkeypatch):
    from hpcps.ps import runtime
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    assert runtime.pick_device("cpu", True) == "cpu"
    assert runtime.pick_device("auto", True) == "cpu"
    assert runtime.pick_device("cuda", False) == "cpu"
    with pytest.raises(RuntimeError, match="^--device cuda was asked for but PyTorch sees no GPU$"):
        runtime.pick_device("cuda", True)


def test_pick_device_picks_the_local_rank_s_gpu(monkeypatch):
    from hpcps.ps import runtime
    picked = []
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime.torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(runtime.torch.cuda, "set_device", picked.append)
    for var in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)
    assert runtime.pick_device("auto", True) == "cuda"
    assert runtime.pick_device("cuda", True) == "cuda"
    assert runtime.pick_device("auto", False) == "cpu"
    monkeypatch.setenv("SLURM_LOCALID", "6")
    assert runtime.pick_device("cuda", True) == "cuda"
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "5")
    assert runtime.pick_device("cuda", True) == "cuda"
    monkeypatch.setenv("MPI_LOCALRANKID", "3")
    assert runtime.pick_device("cuda", True) == "cuda"
    assert picked == [0, 0, 2, 1, 3]


def _poisoned(monkeypatch, at_step: int, how: str):
    """Make the counting workload's step at_step return a NaN loss ("loss") or a NaN gradient ("grad")."""
    from tests.fixtures import counting_workload
    original = counting_workload.CountingWorkload.loss

    def loss(self, model, batch):
        step = self.steps
        value, correct = original(self, model, batch)
        if step == at_step:
            value = value * float("nan") if how == "grad" else value.detach() * float("nan")
            if how == "loss":
                value.requires_grad_(True)
        return value, correct
    monkeypatch.setattr(counting_workload.CountingWorkload, "loss", loss)


@pytest.mark.parametrize("sync, staleness", MODES)
def test_a_non_finite_loss_stops_the_run_naming_the_iteration(monkeypatch, sync, staleness):
    from hpcps.ps.checkpointer import TrainingDiverged
    _poisoned(monkeypatch, 2, "loss")
    with pytest.raises(TrainingDiverged) as e:
        train(counting_job(sync, staleness, iterations=6))
    assert str(e.value) == ("non-finite loss (nan) in iteration 3 on rank 0; "
                            "no checkpoint (give --checkpoint DIR)")


@pytest.mark.parametrize("sync, staleness", MODES)
def test_a_non_finite_gradient_stops_the_run_naming_the_piece(monkeypatch, tmp_path, sync, staleness):
    from hpcps.ps.checkpointer import CheckpointSettings, TrainingDiverged
    _poisoned(monkeypatch, 3, "grad")
    with pytest.raises(TrainingDiverged) as e:
        train(counting_job(sync, staleness, iterations=8), checkpoints=CheckpointSettings(tmp_path, every=2))
    # the last piece's gradient is complete first, and its step is the first to see the NaN
    what = "gradient of worker 0" if sync == "asp" else "aggregated gradient"
    assert str(e.value) == (f"non-finite {what} in piece 2 (elements 32..39, 8 not finite) in iteration 4 on "
                            f"rank 0; last good checkpoint: {tmp_path / 'ckpt-00000002.h5'} (after iteration 2)")


def test_optimiser_state_that_overflows_is_not_checkpointed_and_the_run_says_where(monkeypatch, tmp_path: Path):
    """A finite gradient of 1e22 squares past float32 in Adam's second moment while the step itself stays
    finite: the checkpoint after that step is not written, and the run stops naming what is not finite,
    the iteration and the last good checkpoint."""
    from hpcps.ps.checkpointer import CheckpointSettings, TrainingDiverged
    from tests.fixtures import counting_workload
    original = counting_workload.CountingWorkload.loss

    def loss(self, model, batch):
        value, correct = original(self, model, batch)
        return (value * 1e22 if self.steps == 2 else value), correct
    monkeypatch.setattr(counting_workload.CountingWorkload, "loss", loss)
    job = counting_job(iterations=4, optimizer=OptimizerConfig("adam", lr=0.1))
    with pytest.raises(TrainingDiverged) as e:
        train(job, checkpoints=CheckpointSettings(tmp_path, every=1))
    assert str(e.value) == ("non-finite exp_avg_sq at the checkpoint after iteration 2; last good checkpoint: "
                            f"{tmp_path / 'ckpt-00000001.h5'} (after iteration 1)")
    assert [c.name for c in tmp_path.glob("ckpt-*.h5")] == ["ckpt-00000001.h5"]


def test_a_checkpoint_that_names_no_mode_was_written_under_bsp(tmp_path: Path):
    """A schedule record without sync and staleness (a writer before they were recorded) reads as bsp
    with staleness 0: resuming it under bsp says nothing of a change of mode."""
    from dataclasses import replace

    from hpcps.ps.checkpoint import read_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    train(counting_job(iterations=2), checkpoints=CheckpointSettings(tmp_path))
    ckpt = read_checkpoint(tmp_path / "ckpt-00000002.h5")
    older = replace(ckpt, schedule={k: v for k, v in ckpt.schedule.items() if k not in ("sync", "staleness")})
    _, logs = train(counting_job(iterations=3), checkpoints=CheckpointSettings(None, resume=older, resuming=True))
    assert f"resuming from {ckpt.path} after iteration 2, under the same schedule" in logs


def test_a_floating_point_error_of_the_workload_s_own_stops_the_run_naming_the_iteration(monkeypatch):
    """A FloatingPointError raised by the model's code (NumPy told to raise, say), not by a server's check:
    it carries no iteration of its own, and the rank's is named."""
    from hpcps.ps.checkpointer import TrainingDiverged
    from tests.fixtures import counting_workload
    loss, calls = counting_workload.CountingWorkload.loss, []

    def overflowing(self, model, batch):
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("overflow encountered in exp")
        return loss(self, model, batch)
    monkeypatch.setattr(counting_workload.CountingWorkload, "loss", overflowing)
    with pytest.raises(TrainingDiverged) as e:
        train(counting_job(iterations=6))
    assert str(e.value) == ("overflow encountered in exp in iteration 2 on rank 0; "
                            "no checkpoint (give --checkpoint DIR)")


def test_a_bundled_workload_trains_on_its_own_batches_in_process():
    """Each step computes on the batch the worker drew (a workload that reads its batch: digits)."""
    job = Job("d", "digits", OptimizerConfig("sgd", lr=0.1), TrainingConfig(global_batch=2, iterations=3, seed=1),
              model={"hidden": 8})
    result, logs = train(job)
    assert result.iterations == 3 and np.isfinite(result.final_params).all()
    assert logs[-1].startswith("done: ")


def test_last_good_text_names_the_newest_checkpoint(tmp_path):
    from hpcps.ps.checkpointer import Checkpointer, CheckpointSettings
    c = object.__new__(Checkpointer)
    c.settings, c.last_good, c.last_path = CheckpointSettings(tmp_path), None, None
    assert c.last_good_text() == "no checkpoint was written"
    c.settings = CheckpointSettings(None)
    assert c.last_good_text() == "no checkpoint (give --checkpoint DIR)"
    c.settings, c.last_good = CheckpointSettings(tmp_path), 12
    assert c.last_good_text() == f"last good checkpoint: {tmp_path / 'ckpt-00000012.h5'} (after iteration 12)"
    c.last_path = tmp_path / "elsewhere.h5"
    assert c.last_good_text() == f"last good checkpoint: {tmp_path / 'elsewhere.h5'} (after iteration 12)"
    c.settings, c.last_path = CheckpointSettings(None), None
    assert c.last_good_text() == "last good checkpoint: None (after iteration 12)"


def test_stop_signals_are_taken_on_rank_0_only_and_put_back():
    import os
    import signal

    from hpcps.ps.checkpointer import STOP_SIGNALS, StopSignals
    assert STOP_SIGNALS == (signal.SIGUSR1, signal.SIGTERM)
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    s0, s1 = StopSignals(0), StopSignals(1)
    assert s0.rank == 0 and s0.received is None and s0._old == {}
    try:
        assert s0.install() is s0
        assert all(signal.getsignal(s) == s0._handle for s in STOP_SIGNALS)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert s0.received == "SIGUSR1"
        s0._handle(signal.SIGTERM, None)         # the first reason stays
        assert s0.received == "SIGUSR1"
        s1._handle(signal.SIGTERM, None)
        assert s1.received is None
    finally:
        s0.uninstall()
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    assert s0._old == {}
    fresh = StopSignals(0)
    fresh._handle(signal.SIGTERM, None)
    assert fresh.received == "SIGTERM"


def test_flag_lag_and_mode_names():
    from hpcps.ps.checkpointer import ASP_FLAG_LAG, _mode, flag_lag
    assert flag_lag("bsp") == 1 and flag_lag("ssp", 0) == 2 and flag_lag("ssp", 3) == 5
    assert flag_lag("asp") == ASP_FLAG_LAG == 16
    assert _mode({}) == "bsp" and _mode({"sync": "asp"}) == "asp"
    assert _mode({"sync": "ssp", "staleness": 2}) == "ssp (staleness 2)"
    assert _mode({"sync": "ssp"}) == "ssp (staleness 0)"


def test_a_checkpoint_of_another_job_names_what_differs():
    from hpcps.ps.checkpoint import CheckpointError, _short, check_resumable, identity_of
    assert _short({"b": 1, "a": [2]}) == '{"a": [2], "b": 1}'
    long = {"k": "x" * 100}
    assert _short(long) == json_text(long)[:77] + "..." and len(_short(long)) == 80
    exact = "y" * 78                              # json adds the quotes: 80 characters
    assert _short(exact) == f'"{exact}"'
    from hpcps.ps.checkpoint import Checkpoint
    job = counting_job()
    other = counting_job(name="other")
    ident = identity_of(job)
    ckpt = Checkpoint(3, "other", {**ident, "model": {"block": 7}}, {}, np.zeros(5, np.float32), {}, {}, None, {},
                      None, path=Path("c.h5"))
    with pytest.raises(CheckpointError, match=r"written by another job: its model is \{\"block\": 7\}, "
                                              r"this job's is \{\"block\": 40\} \(job 'other'\)"):
        check_resumable(ckpt, other)
    same = Checkpoint(3, "count", ident, {}, np.zeros(5, np.float32), {}, {}, None, {}, None, path=Path("c.h5"))
    check_resumable(same, job, 5)
    with pytest.raises(CheckpointError, match="holds 5 parameters, this job's model has 6"):
        check_resumable(same, job, 6)


def json_text(value) -> str:
    import json
    return json.dumps(value, sort_keys=True)


def test_checkpoints_every_few_seconds_follow_rank_0_s_clock(tmp_path: Path):
    from hpcps.ps.checkpoint import list_checkpoints
    from hpcps.ps.checkpointer import CheckpointSettings
    # every boundary is past the interval: rank 0 asks at each, and the run saves one boundary later
    result, logs = train(counting_job("bsp", iterations=5), checkpoints=CheckpointSettings(tmp_path, every_s=1e-9,
                                                                                         keep=10))
    assert [it for it, _ in list_checkpoints(tmp_path)] == [5, 4, 3, 2]
    assert len([m for m in logs if m.startswith("checkpoint ")]) == 4
    other = tmp_path / "hour"
    train(counting_job("bsp", iterations=5), checkpoints=CheckpointSettings(other, every_s=3600.0))
    assert [it for it, _ in list_checkpoints(other)] == [5]          # only the final one


def test_resuming_without_the_checkpoint_on_rank_0_is_refused():
    from hpcps.ps.checkpointer import CheckpointSettings
    with pytest.raises(RuntimeError, match=r"^rank 0: the checkpoint to resume from must be read on rank 0 only$"):
        train(counting_job("bsp", iterations=2), checkpoints=CheckpointSettings(None, resuming=True))


def test_pieces_must_agree_on_their_optimiser_state():
    from hpcps.ps.checkpointer import _agree
    vec = ((5,), "float32")
    one = {"keys": {0: {"m": vec, "step": ((), "float32")}}, "scalars": {0: {"step": np.array(2.0)}}}
    two = {"keys": {1: {"m": vec, "step": ((), "float32")}}, "scalars": {1: {"step": np.array(2.0)}}}
    keys, scalars = _agree([one, two], 2)
    assert keys == ["m"] and list(scalars) == ["step"] and scalars["step"] == 2.0
    with pytest.raises(RuntimeError, match=r"^2 of 3 pieces reported their state$"):
        _agree([one, two], 3)
    late = {"keys": {1: {"m": vec, "step": ((), "float32")}}, "scalars": {1: {"step": np.array(3.0)}}}
    with pytest.raises(RuntimeError, match=r"^optimiser scalar 'step' differs between pieces: 2.0 and 3.0$"):
        _agree([one, late], 2)
    other = {"keys": {1: {"v": vec}}, "scalars": {1: {}}}
    with pytest.raises(RuntimeError, match=r"^pieces hold different optimiser state: "):
        _agree([one, other], 2)
    both = {"keys": {0: {"b": vec, "a": vec}, 1: {"b": vec, "a": vec}}, "scalars": {0: {}, 1: {}}}
    assert _agree([both], 2) == (["a", "b"], {})


def _emulation(compute: str, network: str = "fabric"):
    from hpcps.cluster import Cluster, Node, NodeType
    from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker
    from hpcps.ps.runtime import Emulation
    from hpcps.sim.profile import WorkloadProfile
    fast = NodeType("fast", speed=2.0, cores=4, nic_gbps=8.0, latency_us=100.0, fixed_ms=3.0)
    cluster = Cluster("c", (fast,), (Node("a1", fast),))
    placement = NodeSchedule((NodePlan("a1", True, (NodeWorker(2, 1),)),)).to_rank_schedule()
    profile = WorkloadProfile("toy", BLOCK, 1e-3, 5e-4, 0.5, 0.9, 0.25, 1e6)
    return Emulation(cluster, placement, profile, 4.0, compute, network)


@pytest.mark.parametrize("sync, staleness", MODES)
@pytest.mark.parametrize("compute", ["reference", "each"])
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "after-step"])
def test_an_emulated_node_trains_the_same_and_reports_its_setting(monkeypatch, sync, staleness, compute, overlap):
    from hpcps.emulate import rank as emulate_rank
    from hpcps.ps import runtime
    made = {}

    def capture(name, cls):
        def build(*args, **kw):
            made[name] = obj = cls(*args, **kw)
            made[name + "_kw"] = kw
            return obj
        monkeypatch.setattr(module_of[name], name, build)
    from hpcps.emulate import node as emulate_node
    module_of = {"Exchange": runtime, "StaleExchange": runtime, "RankEmulator": emulate_rank,
                 "PushSchedule": emulate_node}
    capture("PushSchedule", emulate_node.PushSchedule)
    capture("Exchange", runtime.Exchange)
    capture("StaleExchange", runtime.StaleExchange)
    capture("RankEmulator", emulate_rank.RankEmulator)
    from hpcps.ps.worker import Worker
    steps = []
    step = Worker.step
    threads = []
    monkeypatch.setattr(Worker, "step", lambda self, batch: steps.append(batch) or threads.append(
        torch.get_num_threads()) or step(self, batch))
    rec = Recorder()
    job = counting_job(sync, staleness, iterations=6,
                       exchange=ExchangeConfig(bucket_mb=64 / 2 ** 20, overlap=overlap))
    result, logs = train(job, emulation=_emulation(compute), recorder=rec)
    assert len(steps) >= 6 and all(b is not None for b in steps)     # each step on its batch
    assert set(threads) == {1}          # emulated threads are the node clock's: one real one computes
    kind = "Exchange" if sync == "bsp" else "StaleExchange"
    kw = made[kind + "_kw"]
    if overlap and sync == "bsp":       # an overlapped step keeps the exchange going while it is held
        assert made["PushSchedule"].poll == made["Exchange"].progress
    emulator = made["RankEmulator"]
    assert kw["emulator"] is emulator and kw["sleep_wait"] is None
    assert kw["aggregate"] == emulator.clock.run_aggregate and kw["clock"] == emulator.time
    # between steps an emulated ssp or asp rank keeps serving; bsp's never idles
    assert (emulator.clock.idle == made[kind].progress) == (sync != "bsp")
    assert made[kind].defer_aggregation is False
    if sync == "bsp" and overlap:
        # a rank that also serves updates the pieces that became ready during its step after the step
        for c in rec.named("iteration"):
            assert c[9] >= c[6]
    np.testing.assert_array_equal(result.final_params, np.full(BLOCK, 6.0, np.float32))
    attrs = rec.run["attrs"]
    assert attrs["emulation_dilation"] == 4.0 and attrs["emulation_compute"] == compute
    assert attrs["emulation_network"] == "fabric"
    # under emulation only bsp overlaps pushes with the step (each at its share of the emulated step)
    assert attrs["overlap"] == int(overlap and sync == "bsp")
    assert logs[0].endswith(", overlapped") == (overlap and sync == "bsp")
    cost = [m for m in logs if m.startswith("emulated step cost")]
    if compute == "reference":
        import json
        steps = json.loads(attrs["emulated_step_cost_s"])
        assert len(steps) == 1 and steps[0] > 0
        assert cost == [f"emulated step cost (CPU time alone here, ms): a1 {steps[0] * 1e3:.2f}"]
    else:
        assert "emulated_step_cost_s" not in attrs and cost == []
    assert (rec.while_waiting is not None) == (sync != "bsp")


def test_a_resumed_run_sets_aside_later_checkpoints_of_the_run_it_left(tmp_path: Path):
    from hpcps.ps.checkpoint import list_checkpoints, read_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    train(counting_job("bsp", iterations=6), checkpoints=CheckpointSettings(tmp_path, every=2, keep=5))
    two = read_checkpoint(dict(list_checkpoints(tmp_path))[2])
    result, logs = train(counting_job("bsp", iterations=5),
                         checkpoints=CheckpointSettings(tmp_path, every=1, keep=5, resume=two, resuming=True))
    saved = [m for m in logs if m.startswith("checkpoint ")]
    assert saved[0].startswith(f"checkpoint {tmp_path / 'ckpt-00000003.h5'} after iteration 3: ")
    assert saved[0].endswith("s; set aside ckpt-00000006.h5.superseded (a later iteration of an abandoned run)"
                             "; set aside ckpt-00000004.h5.superseded (a later iteration of an abandoned run)")
    assert [it for it, _ in list_checkpoints(tmp_path)] == [5, 4, 3, 2]          # 4 of this run
    assert (tmp_path / "ckpt-00000004.h5.superseded").is_file()
    assert (tmp_path / "ckpt-00000006.h5.superseded").is_file()
    np.testing.assert_array_equal(result.final_params, np.full(BLOCK, 5.0, np.float32))


@pytest.mark.parametrize("sync, staleness", [("bsp", 0), ("asp", 0)])
def test_on_a_testbed_s_real_links_waiting_ranks_sleep(monkeypatch, sync, staleness):
    """network "real": the ranks stand on a testbed's nodes sharing this machine's cores, whose links are
    real: the exchange sleeps between polls whatever the cores, and the run records the setting."""
    from hpcps.ps import runtime
    made = {}
    kind = "Exchange" if sync == "bsp" else "StaleExchange"
    cls = getattr(runtime, kind)

    def build(*a, **kw):
        made.update(kw)
        return cls(*a, **kw)
    monkeypatch.setattr(runtime, kind, build)
    rec = Recorder()
    result, _ = train(counting_job(sync, staleness, iterations=3), emulation=_emulation("each", "real"), recorder=rec)
    assert made["sleep_wait"] is True
    assert rec.run["attrs"]["emulation_network"] == "real"
    np.testing.assert_array_equal(result.final_params, np.full(BLOCK, 3.0, np.float32))


@pytest.mark.parametrize("sync, staleness", MODES)
def test_progress_rows_give_accuracy_and_the_rate_of_their_own_iterations(monkeypatch, sync, staleness):
    """Every step counts one of its 2 samples correct: each row's train accuracy is 0.5. A row covers
    log_every x 2 = 4 samples done in well under a second, so its rate is above 4 samples/s (a rate
    floored at a whole second would not be)."""
    from tests.fixtures import counting_workload
    original = counting_workload.CountingWorkload.loss

    def loss(self, model, batch):
        value, _ = original(self, model, batch)
        return value, 1.0
    monkeypatch.setattr(counting_workload.CountingWorkload, "loss", loss)
    result, _ = train(counting_job(sync, staleness, iterations=6, log_every=2))
    assert [h["iteration"] for h in result.history] == [2, 4, 6]
    assert [h["train_accuracy"] for h in result.history] == [0.5, 0.5, 0.5]
    assert all(h["samples_per_s"] > 4.0 for h in result.history), result.history
    assert result.stopped is False and result.start_iteration == 0


def test_evaluation_time_is_left_out_of_the_training_time(monkeypatch):
    """Two evaluations of 0.6 s each in a run whose steps take milliseconds: wall_s, and the rates
    computed from it, are the training loop's alone."""
    import time

    from tests.fixtures import counting_workload

    def evaluate(self, model):
        time.sleep(0.6)
        return {"test_loss": 0.0}
    monkeypatch.setattr(counting_workload.CountingWorkload, "evaluate", evaluate)
    result, _ = train(counting_job("bsp", iterations=6, eval_every=2, log_every=3))
    assert 0.0 < result.wall_s < 0.6, result.wall_s
    assert result.samples_per_s == pytest.approx(6 * 2 / result.wall_s)
    assert all(h["samples_per_s"] > 1.5 * 3 * 2 for h in result.history), result.history


def test_the_trace_records_the_worker_s_threads():
    from mpi4py import MPI

    from hpcps.ps.runtime import run_training
    from tests.unit.thread_ranks import run_ranks
    rec = Recorder()
    threads = torch.get_num_threads()
    try:
        run_ranks(1, lambda _comm: run_training(MPI.COMM_SELF, counting_job(iterations=2),
                                                Schedule((0,), (WorkerSpec(0, 2, threads=2),)), device="cpu",
                                                log=lambda _: None, recorder=rec))
    finally:
        torch.set_num_threads(threads)
    assert rec.run["threads"] == 2 and rec.run["batch"] == 2


@pytest.mark.parametrize("sync, staleness", MODES)
def test_a_local_push_is_recorded_against_its_shard(sync, staleness):
    rec = Recorder()
    train(counting_job(sync, staleness, iterations=3), recorder=rec)
    local = [c for c in rec.named("transfer") if c[3] == "local"]
    assert local and all(c[4] == 0 for c in local), local


def test_model_buffers_of_every_shape_survive_a_resume(monkeypatch, tmp_path: Path):
    """Rank 0's buffers go into the checkpoint and come back on resume, a 0-d one (BatchNorm's
    num_batches_tracked) among them: each step counts itself in a scalar and a (2,) buffer."""
    from hpcps.ps.checkpoint import read_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    from tests.fixtures import counting_workload
    build, loss = counting_workload.CountingWorkload.build_model, counting_workload.CountingWorkload.loss
    seen: list[tuple[int, list[int]]] = []

    def build_model(self):
        model = build(self)
        model.register_buffer("steps", torch.tensor(0))
        model.register_buffer("pair", torch.zeros(2, dtype=torch.int64))
        return model

    def counting_loss(self, model, batch):
        seen.append((int(model.steps), model.pair.tolist()))
        with torch.no_grad():
            model.steps += 1
            model.pair += 2
        return loss(self, model, batch)
    monkeypatch.setattr(counting_workload.CountingWorkload, "build_model", build_model)
    monkeypatch.setattr(counting_workload.CountingWorkload, "loss", counting_loss)
    train(counting_job(iterations=3), checkpoints=CheckpointSettings(tmp_path))
    ckpt = read_checkpoint(tmp_path / "ckpt-00000003.h5")
    assert ckpt.buffers["steps"].shape == () and ckpt.buffers["steps"] == 3
    assert ckpt.buffers["pair"].tolist() == [6, 6]
    seen.clear()
    train(counting_job(iterations=5), checkpoints=CheckpointSettings(None, resume=ckpt, resuming=True))
    assert seen == [(3, [6, 6]), (4, [8, 8])]


def test_a_resume_into_a_model_with_other_buffers_is_refused_before_training(monkeypatch, tmp_path: Path):
    """The same parameters with other statistics (a norm layer's code swapped): refused on rank 0 before
    any step, naming the buffer, where the statistics used to be left at their defaults unsaid."""
    from hpcps.ps.checkpoint import CheckpointError, read_checkpoint
    from hpcps.ps.checkpointer import CheckpointSettings
    from tests.fixtures import counting_workload
    build, loss = counting_workload.CountingWorkload.build_model, counting_workload.CountingWorkload.loss
    shape = [2]
    steps = []

    def build_model(self):
        model = build(self)
        model.register_buffer("pair", torch.zeros(shape[0]))
        return model
    monkeypatch.setattr(counting_workload.CountingWorkload, "build_model", build_model)
    monkeypatch.setattr(counting_workload.CountingWorkload, "loss",
                        lambda self, model, batch: steps.append(1) or loss(self, model, batch))
    train(counting_job(iterations=2), checkpoints=CheckpointSettings(tmp_path))
    ckpt = read_checkpoint(tmp_path / "ckpt-00000002.h5")
    shape[0], steps[:] = 3, []
    with pytest.raises(CheckpointError, match=r"holds other model buffers than this job's model: pair has shape "
                                              r"\[2\] there, \[3\] here$"):
        train(counting_job(iterations=4), checkpoints=CheckpointSettings(None, resume=ckpt, resuming=True))
    assert steps == []


def test_device_cpu_trains_on_the_cpu_where_a_gpu_is_seen(monkeypatch):
    """run_training hands its device argument to pick_device: with PyTorch reporting a GPU, device
    'cpu' still trains on the CPU, and the trace says so."""
    from hpcps.ps import runtime

    def no_gpu_here(*_a, **_k):
        raise AssertionError("a GPU was selected for a run given device='cpu'")
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime.torch.cuda, "set_device", no_gpu_here)
    rec = Recorder()
    result, _ = train(counting_job(iterations=2), recorder=rec)
    assert rec.run["device"] == "cpu"
    np.testing.assert_array_equal(result.final_params, np.full(BLOCK, 2.0, np.float32))


def test_device_cuda_without_a_gpu_is_refused_before_training(monkeypatch):
    from mpi4py import MPI

    from hpcps.ps import runtime
    from tests.unit.thread_ranks import run_ranks
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="^--device cuda was asked for but PyTorch sees no GPU$"):
        run_ranks(1, lambda _comm: runtime.run_training(MPI.COMM_SELF, counting_job(iterations=2), one_rank(),
                                                        device="cuda", log=lambda _: None))


def test_a_checkpoint_every_iteration_starts_with_the_first(tmp_path: Path):
    from hpcps.ps.checkpoint import list_checkpoints
    from hpcps.ps.checkpointer import CheckpointSettings
    train(counting_job(iterations=3), checkpoints=CheckpointSettings(tmp_path, every=1, keep=5))
    assert [it for it, _ in list_checkpoints(tmp_path)] == [3, 2, 1]


def test_the_evaluation_sees_the_trained_model(monkeypatch):
    """The final and the periodic evaluations are of the model with the servers' parameters."""
    from tests.fixtures import counting_workload
    monkeypatch.setattr(counting_workload.CountingWorkload, "evaluate",
                        lambda self, model: {"test_loss": float(model.w.sum())})
    result, logs = train(counting_job(iterations=4, eval_every=2))
    assert "iter     2/4  eval  test_loss 80.0000" in logs             # 40 elements at 2.0
    assert result.final_metrics == {"test_loss": 160.0}


def test_a_checkpoint_off_an_iteration_boundary_is_refused_naming_the_pieces_versions():
    """If settling left the pieces at different versions, save() refuses rather than write a state no
    iteration had (an internal fault, so an exception naming what it found, not a user error)."""
    from hpcps.ps.checkpointer import Checkpointer

    class Unsettled:
        version = {0: 4, 1: 3, 2: 4}

        def settle(self, done):
            pass

        def at_boundary(self, done):
            return False
    with pytest.raises(RuntimeError, match=r"^checkpoint after iteration 4 outside an iteration boundary "
                                           r"\(pieces at \[3, 4\]\)$"):
        object.__new__(Checkpointer).save(4, Unsettled())


@pytest.mark.parametrize("sync, staleness", [("asp", 0), ("ssp", 1)])
def test_one_rank_traces_the_staleness_of_every_piece_it_reads(sync, staleness):
    """One rank serving its own worker: at each clock it reads every piece at the version of the clock
    before (all its own pushes applied), so the trace has one staleness record per clock and piece,
    each 0 behind (iteration, shard, piece, version read, staleness)."""
    rec = Recorder()
    train(counting_job(sync, staleness, iterations=4), recorder=rec)
    got = sorted(c[1:] for c in rec.named("staleness"))
    assert got == [(c, 0, q, c, 0) for c in range(4) for q in range(3)]
