"""Lossy push codecs through real MPI: training with int8 and sign pushes moves the encoded bytes of
the plan and still learns; device buffers are encoded from a host copy. Runs at any size >= 3."""

import numpy as np
import pytest

from hpcps.config.job import ExchangeConfig, Job, OptimizerConfig, TrainingConfig
from hpcps.config.schedule import Schedule, WorkerSpec
from hpcps.ps.codec import make_codec
from hpcps.ps.exchange import PULL_TAG, PUSH_TAG, Exchange
from hpcps.ps.plan import MessagePlan
from hpcps.ps.server import ServedPiece
from tests.fakes import exchange_buffer


class CountingComm:
    """The communicator, with the size of every buffer handed to Isend and Irecv noted by tag."""

    def __init__(self, comm):
        self._comm = comm
        self.sent: list[tuple[int, int, int]] = []        # (tag, peer, bytes)
        self.received: list[tuple[int, int, int]] = []

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def Isend(self, buf, dest, tag=0):
        self.sent.append((tag, dest, memoryview(buf).nbytes))
        return self._comm.Isend(buf, dest=dest, tag=tag)

    def Irecv(self, buf, source, tag=0):
        self.received.append((tag, source, memoryview(buf).nbytes))
        return self._comm.Irecv(buf, source=source, tag=tag)


class Transfers:
    """A recorder that keeps the transfers (hpcps.trace.TraceRecorder's methods, nothing written)."""

    def __init__(self):
        self.rows = []
        self.attrs = {}

    def begin_run(self, **kw):
        self.attrs = kw.get("attrs", {})

    def transfer(self, meta, t0, t1, iteration=None):
        self.rows.append((iteration, meta))

    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("job_codec, worker1_codec", [("int8", "sign"), ("sign", None)])
def test_training_with_lossy_pushes_moves_encoded_bytes_and_learns(job_codec, worker1_codec):
    from mpi4py import MPI

    from hpcps.ps.runtime import build_plan, run_training
    world = MPI.COMM_WORLD
    size, rank = world.Get_size(), world.Get_rank()
    comm = CountingComm(world)
    iterations = 40
    job = Job("codecs", "digits", OptimizerConfig("sgd", lr=0.1, momentum=0.9),
              TrainingConfig(global_batch=48, iterations=iterations, seed=3, log_every=5),
              model={"hidden": 32}, data={"test_fraction": 0.2},
              # small pieces: several per shard, each with chunks and a short last chunk
              exchange=ExchangeConfig(codec=job_codec, bucket_mb=2000 * 4 / 2 ** 20))
    schedule = Schedule((size - 2, size - 1), (WorkerSpec(0, 16), WorkerSpec(1, 16, codec=worker1_codec),
                                               WorkerSpec(2, 16)))
    rec = Transfers()
    result = run_training(comm, job, schedule, device="cpu", recorder=rec)

    n = int(rec.attrs["n_params"])
    plan = build_plan(job, schedule, n)
    codecs = [job_codec, worker1_codec or job_codec, job_codec]
    for row in range(3):
        for p in plan.pieces:
            assert plan.push_nbytes[row][p.index] == make_codec(codecs[row]).wire_nbytes(p.size)
    # Every push message, at both ends, handed MPI exactly the plan's encoded bytes (a longer message
    # than its receive buffer is an MPI error), and the trace recorded those bytes.
    pushes_sent = [(t - PUSH_TAG, dest, b) for t, dest, b in comm.sent if PUSH_TAG <= t < PUSH_TAG + len(plan.pieces)]
    pushes_recv = [(t - PUSH_TAG, src, b) for t, src, b in comm.received if PUSH_TAG <= t < PUSH_TAG + len(plan.pieces)]
    want_sent = [(m.piece, m.dst, m.nbytes) for m in plan.pushes() if m.src == rank and not m.local]
    want_recv = [(m.piece, m.src, m.nbytes) for m in plan.pushes() if m.dst == rank and not m.local]
    assert sorted(pushes_sent) == sorted(want_sent * iterations)
    assert sorted(pushes_recv) == sorted(want_recv * iterations)
    assert all(nbytes < 4 * plan.pieces[q].size / 3.9 for q, _, nbytes in pushes_sent + pushes_recv)
    traced = sorted((m.piece, m.peer, m.nbytes) for _, m in rec.rows if m.kind == "push" and m.direction == "recv")
    assert traced == sorted(want_recv * iterations)
    pulls = [b for t, _, b in comm.sent if PULL_TAG <= t < PUSH_TAG]
    assert all(b % 4 == 0 for b in pulls) and (bool(pulls) == (rank in schedule.servers))   # float32 values
    assert rec.attrs["push_nbytes_per_iteration"] == plan.push_bytes()
    assert rec.attrs["push_raw_nbytes_per_iteration"] == plan.push_bytes(raw=True)
    assert plan.push_bytes(raw=True) / plan.push_bytes() > 3.9

    if rank == 0:
        losses = [h["loss"] for h in result.history]
        assert losses[-1] < 0.6 * losses[0], losses
        assert result.final_metrics["test_accuracy"] > 0.5, result.final_metrics   # chance: 0.1


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("transport", ["direct", "staged"])
def test_lossy_pushes_from_device_buffers(transport):
    """A worker whose gradients live on a device (faked over host memory) pushes int8 through MPI;
    its residuals can be saved and restored."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    n = 3000
    servers = (0, size - 1)
    workers = tuple(WorkerSpec(r, r + 1) for r in range(size))
    codec = make_codec("int8")
    plan = MessagePlan.build(n, servers, [w.rank for w in workers], bucket_bytes=4 * 512,
                             push_nbytes=lambda _row, k: codec.wire_nbytes(k))
    truth = np.linspace(-1, 1, n, dtype=np.float32)
    batches = [w.batch for w in workers]
    served = {p.index: ServedPiece(p, truth[p.start:p.stop], batches, OptimizerConfig("sgd", lr=1.0),
                                   [codec] * size)
              for p in plan.pieces if p.server == rank}
    encoders = {p.index: codec.encoder(p.size) for p in plan.pieces if p.server != rank}

    params_mem = np.zeros(n, np.float32)
    # worker r pushes r + 1 plus a ramp: int8 cannot carry it exactly, error feedback keeps the rest
    grads_mem = (rank + 1 + np.linspace(0, 0.3, n)).astype(np.float32)
    exchange = Exchange(comm, plan, 2, params=exchange_buffer(params_mem, transport),
                        grads=exchange_buffer(grads_mem, transport),
                        served=served, encoders=encoders)
    exchange.start()
    exchange.wait_pieces(slice(None))
    exchange.begin_pushes(0)
    for p in plan.push_order():
        exchange.push(p.index)
    exchange.expect_pulls(1)
    exchange.wait_until(lambda: exchange.pushes_done() and exchange.served_through(0))
    exchange.wait_pieces(slice(None))
    k = np.array(batches, dtype=np.float64)[:, None]
    pushed = np.stack([(r + 1 + np.linspace(0, 0.3, n)).astype(np.float32) for r in range(size)])
    want = truth - (k * pushed).sum(0) / k.sum()
    # each push is off by at most half an int8 step of its chunk
    np.testing.assert_allclose(params_mem, want, atol=0.5 * (size + 1.3) / 127)

    states = exchange.encoder_states()
    assert set(states) == set(encoders)
    for q, r in states.items():
        p = plan.pieces[q]
        assert r.shape == (p.size,) and np.abs(r).max() <= 0.5 * (rank + 1.3) / 127 * 1.0001
        assert np.abs(r).max() > 0
    exchange.load_encoder_states({q: np.zeros_like(r) for q, r in states.items()})
    assert not any(r.any() for r in exchange.encoder_states().values())
    exchange.load_encoder_states(states)
    assert all(np.array_equal(states[q], r) for q, r in exchange.encoder_states().items())

    exchange.begin_pushes(1)
    for p in plan.push_order():
        exchange.push(p.index)
    exchange.wait_until(lambda: exchange.pushes_done() and exchange.served_through(1))
    exchange.drain()
    final = exchange.gather_params(n, root=0)
    if rank == 0:
        # over two iterations error feedback delivers the pushes to within one iteration's int8 step
        np.testing.assert_allclose(final, truth - 2 * (k * pushed).sum(0) / k.sum(), atol=0.5 * (size + 1.3) / 127)


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("sync, staleness", [("bsp", 0), ("ssp", 1), ("asp", 0)])
def test_training_with_16_bit_pulls_moves_half_the_bytes_and_learns(sync, staleness):
    """Every pull message carries exactly the plan's encoded bytes (and 4 more, the version, under ssp and
    asp), at both ends and in the trace, and the job still learns."""
    from mpi4py import MPI

    from hpcps.ps.runtime import build_plan, run_training
    world = MPI.COMM_WORLD
    size, rank = world.Get_size(), world.Get_rank()
    comm = CountingComm(world)
    iterations = 40
    # asp applies every push with momentum, three times an iteration: 0.9 diverges there, codecs or not
    momentum = 0.7 if sync == "asp" else 0.9
    job = Job("pulls", "digits", OptimizerConfig("sgd", lr=0.1, momentum=momentum),
              TrainingConfig(global_batch=48, iterations=iterations, seed=3, log_every=5, sync=sync,
                             staleness=staleness),
              model={"hidden": 32}, data={"test_fraction": 0.2},
              exchange=ExchangeConfig(codec="int8", pull_codec="bf16", bucket_mb=2000 * 4 / 2 ** 20))
    schedule = Schedule((size - 2, size - 1), (WorkerSpec(0, 16), WorkerSpec(1, 16), WorkerSpec(size - 1, 16)))
    rec = Transfers()
    result = run_training(comm, job, schedule, device="cpu", recorder=rec)

    plan = build_plan(job, schedule, int(rec.attrs["n_params"]))
    assert plan.pull_nbytes == tuple(2 * p.size for p in plan.pieces)
    extra = 0 if sync == "bsp" else 4
    pulls_sent = [(t - PULL_TAG, dest, b) for t, dest, b in comm.sent if PULL_TAG <= t < PUSH_TAG]
    pulls_recv = [(t - PULL_TAG, src, b) for t, src, b in comm.received if PULL_TAG <= t < PUSH_TAG]
    want_sent = {(m.piece, m.dst, m.nbytes + extra) for m in plan.pulls() if m.src == rank and not m.local}
    want_recv = {(m.piece, m.src, m.nbytes + extra) for m in plan.pulls() if m.dst == rank and not m.local}
    assert set(pulls_sent) == want_sent and set(pulls_recv) == want_recv
    if sync == "bsp":       # one pull per iteration and worker (ssp and asp send fewer or more: their policy)
        assert sorted(pulls_sent) == sorted(list(want_sent) * iterations)
    traced = {(m.piece, m.peer, m.nbytes) for _, m in rec.rows if m.kind == "pull" and m.direction == "recv"}
    assert traced == want_recv
    assert rec.attrs["pull_codec"] == "bf16"
    assert 2 * rec.attrs["pull_nbytes_per_iteration"] == rec.attrs["pull_raw_nbytes_per_iteration"] > 0
    if rank == 0:
        losses = [h["loss"] for h in result.history]
        if sync == "bsp":           # deterministic: the same figures every run
            assert losses[-1] < 0.6 * losses[0], losses
            assert result.final_metrics["test_accuracy"] > 0.5, result.final_metrics   # chance: 0.1
        else:
            # Under ssp and asp how far 40 steps get depends on timing (asp: the last logged loss 0.68
            # to 0.79 of the first and accuracy 0.72 to 0.81 over five runs; ssp s=1 once 0.66 and once
            # accuracy 0.49): only that it trained is judged here; how stale modes learn is measured in
            # results/staleness.md and the end-to-end tests.
            assert losses[-1] < losses[0] and np.isfinite(result.final_metrics["test_loss"]), losses


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("transport", ["host", "direct", "staged"])
@pytest.mark.parametrize("pull_codec", ["fp16", "bf16"])
def test_every_worker_computes_on_the_decoded_pull_and_the_server_keeps_float32(transport, pull_codec):
    """With a lossy pull codec every worker's parameters, the serving rank's own included, are exactly
    the codec's decoding of the server's float32 values, after the first pull and after an update; the
    server's values (gather_params, checkpoints) stay float32."""
    from mpi4py import MPI

    from hpcps.ps.codec import make_pull_codec
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    n = 3000
    servers = (0, size - 1)
    workers = tuple(WorkerSpec(r, r + 1) for r in range(size))
    codec = make_pull_codec(pull_codec)
    plan = MessagePlan.build(n, servers, [w.rank for w in workers], bucket_bytes=4 * 512,
                             pull_nbytes=codec.wire_nbytes)
    rng = np.random.default_rng(0)
    truth = (rng.standard_normal(n) * 0.7).astype(np.float32)
    batches = [w.batch for w in workers]
    served = {p.index: ServedPiece(p, truth[p.start:p.stop], batches, OptimizerConfig("sgd", lr=0.01),
                                   [make_codec("none")] * size)
              for p in plan.pieces if p.server == rank}

    def decoded(x):
        wire = np.empty(codec.wire_nbytes(n), np.uint8)
        codec.pack(x, wire, np.empty(n, np.float32))
        out = np.empty(n, np.float32)
        codec.unpack(wire, out)
        return out

    params_mem = np.zeros(n, np.float32)
    grads_mem = (np.sin(np.arange(n)) * (rank + 1)).astype(np.float32)
    exchange = Exchange(comm, plan, 2, params=exchange_buffer(params_mem, transport),
                        grads=exchange_buffer(grads_mem, transport), served=served, pull_codec=codec)
    exchange.start()
    exchange.wait_pieces(slice(None))
    assert params_mem.tobytes() == decoded(truth).tobytes()
    assert not np.array_equal(params_mem, truth)          # the values did travel rounded
    exchange.begin_pushes(0)
    for p in plan.push_order():
        exchange.push(p.index)
    exchange.expect_pulls(1)
    exchange.wait_until(lambda: exchange.pushes_done() and exchange.served_through(0))
    exchange.wait_pieces(slice(None))
    master = comm.bcast(exchange.gather_params(n, root=0), root=0)
    k = np.array(batches, dtype=np.float64)[:, None]
    pushed = np.stack([(np.sin(np.arange(n)) * (r + 1)).astype(np.float32) for r in range(size)])
    np.testing.assert_allclose(master, truth - 0.01 * (k * pushed).sum(0) / k.sum(), rtol=1e-6, atol=1e-6)
    assert params_mem.tobytes() == decoded(master).tobytes()
    exchange.begin_pushes(1)
    for p in plan.push_order():
        exchange.push(p.index)
    exchange.drain()
