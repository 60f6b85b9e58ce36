"""Small parts of hpcps.ps checked exactly: names, boundaries and types that whole runs do not pin."""

from __future__ import annotations

import numpy as np
import pytest

from hpcps.comm.waits import SocketWake
from hpcps.ps.checkpoint import _short, share_residuals
from hpcps.ps.codec import Codec, make_codec
from hpcps.ps.plan import Piece
from hpcps.ps.sharding import Shard, tensor_pieces


def test_short_keeps_80_characters_and_cuts_longer_ones():
    assert _short({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'
    assert _short("y" * 78) == '"' + "y" * 78 + '"'            # 80 with its quotes: kept
    assert _short("y" * 79) == '"' + "y" * 76 + "..."          # 81: 77 characters and "..."
    assert len(_short("z" * 500)) == 80


def test_tensor_pieces_skip_tensors_that_only_touch_the_shard():
    sizes = [2, 3, 4]
    assert tensor_pieces(sizes, Shard(0, 0, 2, 5)) == [(1, 0, 3)]
    assert tensor_pieces(sizes, Shard(0, 0, 5, 9)) == [(2, 0, 4)]
    assert tensor_pieces(sizes, Shard(0, 0, 1, 6)) == [(0, 1, 2), (1, 0, 3), (2, 0, 1)]


def pieces(*bounds):
    return [Piece(i, 0, i, a, b) for i, (a, b) in enumerate(bounds)]


def test_shared_residuals_are_float32_and_count_every_dropped_value():
    saved = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])           # float64 in: float32 out
    # pieces 0 and 1 carried by no new worker (their 2 + 2 values dropped), piece 2 by worker 1
    carries = np.array([[False, False, False], [False, False, True]])
    rows, dropped = share_residuals(saved, [4], [1, 3], carries, pieces((0, 2), (2, 4), (4, 6)))
    assert rows.dtype == np.float32
    assert dropped == 4
    np.testing.assert_allclose(rows[1], [0, 0, 0, 0, 5 / 0.75, 6 / 0.75], rtol=1e-6)
    assert not rows[0].any()


def test_a_plain_codec_copies_a_push_received_elsewhere():
    c = Codec()
    out = np.zeros(3, np.float32)
    c.decode_into(np.array([1.0, 2.0, 3.0], np.float32), out)
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0])
    same = np.array([4.0, 5.0], np.float32)
    c.decode_into(same, same)
    np.testing.assert_array_equal(same, [4.0, 5.0])


@pytest.mark.parametrize("name", ["int8", "bf16", "fp16", "sign", "topk"])
def test_roundtrip_works_in_float32(name):
    x = np.linspace(-1, 1, 64)                                   # float64 in
    out = make_codec(name).roundtrip(x)
    assert out.dtype == np.float32 and out.shape == (64,)
    assert np.abs(out - x).max() <= 1.0


def test_a_residual_of_the_wrong_size_is_refused():
    enc = make_codec("int8").encoder(8)
    with pytest.raises(ValueError, match=r"^residual of \(7,\) values for a piece of 8$"):
        enc.load_state(np.zeros(7))
    enc.load_state(np.arange(8.0))
    assert enc.state().dtype == np.float32
    np.testing.assert_array_equal(enc.state(), np.arange(8.0))
    enc.load_state(None)
    assert not enc.state().any()


def test_encoder_states_round_trip_through_an_exchange():
    from hpcps.ps.exchange import Exchange
    ex = object.__new__(Exchange)
    lossy = make_codec("int8").encoder(4)
    plain = make_codec("none").encoder(3)
    ex.encoders = {2: lossy, 5: plain}
    lossy.load_state(np.array([1.0, 2.0, 3.0, 4.0]))
    states = ex.encoder_states()
    assert sorted(states) == [2]
    np.testing.assert_array_equal(states[2], [1.0, 2.0, 3.0, 4.0])
    ex.load_encoder_states({})                                 # a lossy encoder not named starts from zero
    assert not lossy.state().any()
    ex.load_encoder_states({2: np.array([0.5, 0.5, 0.5, 0.5])})
    np.testing.assert_array_equal(lossy.state(), [0.5] * 4)
    with pytest.raises(ValueError, match=r"^residuals for pieces \[1, 7\] that this worker does not push$"):
        ex.load_encoder_states({7: np.zeros(1), 1: np.zeros(1), 2: np.zeros(4)})
    with pytest.raises(ValueError, match=rf"^{type(plain).__name__} keeps no state$"):
        ex.load_encoder_states({5: np.zeros(3)})


class _Clock:
    def __init__(self, overruns, lag_s, pushes, late):
        self.overruns, self.lag_s, self.pushes, self.late_pushes = overruns, lag_s, pushes, late


class _Emulator:
    def __init__(self, clock, dilation=4.0, ref=0.002, name="node-a"):
        self.clock, self.dilation, self.ref, self.node_name = clock, dilation, ref, name
        self.asked = []

    def measure_reference(self, comm, step, key=None, known=None):
        self.asked.append(key)
        if step is not None and known and key in known:
            return known[key]
        if step is not None:
            step()
        return self.ref if step is not None else None


def test_report_emulation_warns_past_one_step_in_twenty():
    from mpi4py import MPI

    from hpcps.ps.runtime import _report_emulation
    said = []
    _report_emulation(MPI.COMM_SELF, _Emulator(_Clock(5, 0.02, 100, 5)), 100, said.append)
    assert said == []                                          # 5 of 100: not more than 5%
    _report_emulation(MPI.COMM_SELF, _Emulator(_Clock(6, 0.4, 100, 6)), 100, said.append)
    # 0.4 s of real overrun at dilation 4: 100.0 ms emulated (one more digit would show a wrong factor)
    assert said == ["warning: 6 of 100 emulated steps ran longer here than on their node (by 100.0 ms emulated in "
                    "all); raise --time-dilation for a faithful emulation",
                    "warning: 6 of 100 overlapped pushes went out later than on their node (the real step was "
                    "not through by then); raise --time-dilation for a faithful overlap"]


def test_report_emulation_on_other_ranks_says_nothing():
    from hpcps.ps.runtime import _report_emulation
    from tests.unit.thread_ranks import run_ranks
    said = [[], []]

    def rank(comm):
        r = comm.Get_rank()
        _report_emulation(comm, _Emulator(_Clock(10 * r, 0.0, 10, 0)), 10, said[r].append)
    run_ranks(2, rank)
    assert said[1] == []
    assert said[0] == ["warning: 10 of 20 emulated steps ran longer here than on their node (by 0.0 ms emulated "
                       "in all); raise --time-dilation for a faithful emulation"]


def test_measure_reference_leaves_the_model_as_it_was():
    import torch
    from mpi4py import MPI

    from hpcps.ps.flat import FlatModel
    from hpcps.ps.runtime import Emulation, _measure_reference

    class Workload:
        def get_batch(self, indices):
            return torch.tensor(indices, dtype=torch.float32)

        def loss(self, model, batch):
            model.bn.running_mean += 1.0                       # a buffer the step moves
            torch.rand(1)                                      # and the random state
            return (model.lin(batch[None]) ** 2).sum(), 0.0

    model = torch.nn.Module()
    model.lin = torch.nn.Linear(3, 1)
    model.bn = torch.nn.BatchNorm1d(2)
    flat = FlatModel(model)
    emu = _Emulator(None)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    said = []
    emulation = Emulation(None, None, None, 4.0)
    costs = _measure_reference(MPI.COMM_SELF, emu, Workload(), flat, [1, 2, 3], said.append, emulation)
    assert costs == [0.002] and emu.asked == [3]
    assert said == ["emulated step cost (CPU time alone here, ms): node-a 2.00"]
    assert torch.equal(torch.get_rng_state(), state)
    assert not model.bn.running_mean.any()
    assert not flat.grads.any()
    none = _measure_reference(MPI.COMM_SELF, emu, Workload(), flat, None, said.append, emulation)
    assert none == [None] and emu.asked == [3, None]
    assert said[-1] == "emulated step cost (CPU time alone here, ms): "


def test_measure_reference_records_what_it_timed_and_charges_what_was_recorded(tmp_path):
    import json

    import torch
    from mpi4py import MPI

    from hpcps.ps.flat import FlatModel
    from hpcps.ps.runtime import Emulation, _measure_reference

    class Workload:
        def get_batch(self, indices):
            return torch.tensor(indices, dtype=torch.float32)

        def loss(self, model, batch):
            return (model(batch[None]) ** 2).sum(), 0.0

    flat = FlatModel(torch.nn.Linear(3, 1))
    path = tmp_path / "costs.json"
    said = []
    fresh = Emulation(None, None, None, 4.0, step_costs=path, step_costs_key="w:1")
    costs = _measure_reference(MPI.COMM_SELF, _Emulator(None), Workload(), flat, [1, 2, 3], said.append, fresh)
    assert costs == [0.002]
    assert json.loads(path.read_text())["steps"] == {"w:1": {"3": 0.002}}
    # A run that starts with the batch size recorded is charged that, says so and adds nothing.
    recorded = Emulation(None, None, None, 4.0, step_costs=path, step_costs_key="w:1",
                         known_step_costs=((3, 0.005),))
    emu = _Emulator(None)
    assert _measure_reference(MPI.COMM_SELF, emu, Workload(), flat, [1, 2, 3], said.append, recorded) == [0.005]
    assert said[-1] == f"emulated step cost (CPU time alone here, ms): node-a 5.00 (1 as recorded in {path})"
    assert json.loads(path.read_text())["steps"] == {"w:1": {"3": 0.002}}


def test_a_peer_failure_names_the_ranks_of_the_requests_mpi_released():
    from mpi4py import MPI

    from hpcps.ps.exchange import Exchange, Transfer
    ex = object.__new__(Exchange)
    pending = MPI.COMM_SELF.Irecv(np.empty(1), source=0, tag=4242)
    try:
        def meta(peer):
            return (print, (0, Transfer("push", "recv", 0, peer, 4)))
        ex._reqs = [MPI.REQUEST_NULL, pending, MPI.REQUEST_NULL, MPI.REQUEST_NULL]
        ex._done = [meta(3), meta(5), meta(1), meta(3)]
        error = MPI.Exception(MPI.ERR_OTHER)
        first = error.Get_error_string().splitlines()[0]
        failure = ex._peer_failure(error)
        assert isinstance(failure, RuntimeError)
        assert str(failure) == f"messages with rank 1, 3 failed ({first}); its process has probably ended"
        ex._reqs = [pending]
        ex._done = [meta(5)]
        assert str(ex._peer_failure(error)) == (f"messages with a peer failed ({first}); "
                                                "its process has probably ended")
    finally:
        pending.Cancel()
        pending.Wait()


def test_a_checkpoint_file_says_what_each_dataset_means(tmp_path):
    import h5py

    from hpcps.ps.checkpoint import Checkpoint, write_checkpoint
    n = 6
    ckpt = Checkpoint(3, "j", {"workload": "w"}, {"n_ranks": 1, "servers": [0], "workers": [[0, 2]]},
                      np.arange(n, dtype=np.float32), {"momentum_buffer": np.ones(n, np.float32)},
                      {"step": np.array(3.0, np.float32)}, np.zeros((2, n), np.float32),
                      {"bn.running_mean": np.zeros(2, np.float32)}, np.zeros((1, 8), np.uint8), created="then")
    path = write_checkpoint(tmp_path, ckpt).path
    with h5py.File(path) as f:
        assert f.attrs["created"] == "then" and f.attrs["iteration"] == 3 and f.attrs["n_params"] == n
        assert f["params"].attrs["units"] == "parameter values"
        assert f["params"].attrs["meaning"] == "the flat parameter vector after `iteration` iterations (model order)"
        assert f["optimizer"].attrs["meaning"] == ("the optimiser's state over the flat vector; scalars are this "
                                                   "group's attributes")
        assert f["optimizer/momentum_buffer"].attrs["meaning"] == "optimiser state 'momentum_buffer' per element"
        assert f["residuals"].attrs["meaning"] == "each worker's error-feedback residual, schedule order"
        assert f["residuals"].dtype == np.float32 and f["residuals"].shape == (2, n)
        assert f["buffers/0"].attrs["name"] == "bn.running_mean"
        assert f["rng/torch"].attrs["meaning"] == "each rank's torch.get_rng_state(), by rank"
    bad = Checkpoint(3, "j", {}, {}, np.zeros(n, np.float32), residuals=np.zeros((2, n + 1), np.float32))
    with pytest.raises(ValueError, match=r"^residuals must be \(n_workers, 6\), got \(2, 7\)$"):
        write_checkpoint(tmp_path / "bad", bad)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_ssp_needs_a_whole_staleness(bad):
    from hpcps.ps.sync import BoundedStaleness, make_policy
    with pytest.raises(ValueError) as e:
        BoundedStaleness(bad)
    assert str(e.value) == f"staleness must be an integer >= 0, got {bad!r}"
    assert make_policy("ssp", 3).staleness == 3 and make_policy("ssp").staleness == 0
    with pytest.raises(ValueError, match=r"^unknown synchronisation 'xsp'; choose one of bsp, ssp, asp$"):
        make_policy("xsp")
    with pytest.raises(ValueError, match=r"^staleness applies to ssp only, got 2 with 'asp'$"):
        make_policy("asp", 2)
    assert make_policy("asp").name == "asp" and make_policy("bsp").name == "bsp"


def test_optimizers_take_every_setting_of_the_job():
    import torch

    from hpcps.config.job import OptimizerConfig
    from hpcps.ps.optim import make_optimizer, make_shard_optimizer
    p = [torch.nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer(OptimizerConfig("sgd", lr=0.3, momentum=0.8, nesterov=True, weight_decay=0.01), p)
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["nesterov"],
            sgd.defaults["weight_decay"]) == (0.3, 0.8, True, 0.01)
    for name, kind in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        o = make_optimizer(OptimizerConfig(name, lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1), p)
        assert type(o) is kind
        assert (o.defaults["lr"], tuple(o.defaults["betas"]), o.defaults["eps"], o.defaults["weight_decay"]) == \
            (0.02, (0.8, 0.95), 1e-6, 0.1)
    with pytest.raises(ValueError, match=r"^unknown optimizer 'lamb'$"):
        make_optimizer(OptimizerConfig("lamb", lr=0.1), p)
    params, grad = np.ones(3, np.float32), np.full(3, 2.0, np.float32)
    make_shard_optimizer(OptimizerConfig("sgd", lr=0.25), params, grad).step()
    np.testing.assert_array_equal(params, [0.5, 0.5, 0.5])          # in place, from the shard's gradient


def test_a_flat_model_binds_trainable_float32_parameters():
    import torch

    from hpcps.ps.flat import FlatModel
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    model[0].bias.requires_grad_(False)
    flat = FlatModel(model)
    assert flat.sizes == [6, 3, 1] and flat.numel == 10
    np.testing.assert_array_equal(flat.params[:6].numpy(), model[0].weight.detach().reshape(-1).numpy())
    model(torch.ones(1, 2)).sum().backward()
    assert flat.grads[6:9].abs().sum() > 0                       # the second layer's weight gradient, in place
    flat.zero_grad()
    assert not flat.grads.any()
    flat.params[0] = 7.0
    assert model[0].weight[0, 0] == 7.0
    with pytest.raises(TypeError, match=r"^parameters must be float32, got torch.float64$"):
        FlatModel(torch.nn.Linear(2, 2).double())


def test_deferred_reports_sum_each_worker_s_rate_since_its_last_report():
    from mpi4py import MPI

    from hpcps.ps.runtime import _DeferredReports

    class Clock:
        t = 10.0

        def __call__(self):
            return self.t

    class Ex:
        def wait_until(self, cond):
            while not cond():
                pass
    clock = Clock()
    reports = _DeferredReports(MPI.COMM_SELF, Ex(), clock, 4)
    assert reports.t_last == 10.0 and reports.it_last == 0 and reports.pending == []
    clock.t = 12.0
    reports.post(np.array([1.0, 2.0, 3.0, 4.0]), 2)          # 4 samples x 2 steps in 2 s
    clock.t = 13.0
    reports.post(np.array([5.0, 6.0, 7.0, 8.0]), 5)          # 3 more steps in 1 s
    rows = reports.poll() + reports.finish()
    assert [done for done, _ in rows] == [2, 5]
    np.testing.assert_array_equal(rows[0][1], [1.0, 2.0, 3.0, 4.0, 4.0])
    np.testing.assert_array_equal(rows[1][1], [5.0, 6.0, 7.0, 8.0, 12.0])
    assert reports.pending == [] and reports.finish() == []
    clock.t = 13.0
    reports.post(np.zeros(4), 6)                             # no time passed: the rate stays finite
    assert reports.finish()[0][1][4] == pytest.approx(4 / 1e-9)


def test_cut_pieces_takes_buckets_of_one_element_and_refuses_less():
    from hpcps.ps.plan import cut_pieces
    shards = [Shard(0, 0, 0, 64)]
    for bucket in (1, 16, 32):
        pieces = cut_pieces(shards, bucket)
        assert pieces[0].start == 0 and pieces[-1].stop == 64
        assert all(a.stop == b.start for a, b in zip(pieces, pieces[1:]))
    assert [p.size for p in cut_pieces(shards, 32)] == [32, 32]
    with pytest.raises(ValueError, match=r"^bucket_elements must be >= 1, got 0$"):
        cut_pieces(shards, 0)


def test_at_boundary_needs_every_piece_stepped_and_nothing_pending():
    from hpcps.ps.exchange import Exchange

    def ex(version, worker=True, pushed=True, in_flight=0, staging=(), ready=()):
        e = object.__new__(Exchange)
        e.version, e.is_worker = dict(version), worker
        e.pushed = np.array([pushed, True])
        e._in_flight_pushes = in_flight
        e._staging, e._ready_to_aggregate = list(staging), list(ready)
        return e
    assert ex({0: 3, 1: 3}).at_boundary(3)
    assert not ex({0: 3, 1: 3}).at_boundary(2)
    assert not ex({0: 3, 1: 2}).at_boundary(3)
    assert not ex({0: 3}, pushed=False).at_boundary(3)
    assert not ex({0: 3}, in_flight=1).at_boundary(3)
    assert ex({0: 3}, worker=False, pushed=False).at_boundary(3)     # a rank that only serves
    assert not ex({0: 3}, staging=[(None, 0, 3)]).at_boundary(3)
    assert not ex({0: 3}, ready=[0]).at_boundary(3)
    assert not ex({0: 3}, worker=False, pushed=False, ready=[1]).at_boundary(3)
    assert ex({}, worker=False).at_boundary(7)                       # neither serves nor works
    e = ex({0: 4, 1: 5})
    assert e.served_through(3) and not e.served_through(4)
    assert e.pushes_done() and not ex({}, pushed=False).pushes_done() and not ex({}, in_flight=2).pushes_done()


def test_serve_pieces_keeps_a_row_set_per_round_that_can_be_open():
    from hpcps.config.job import OptimizerConfig
    from hpcps.ps.plan import MessagePlan
    from hpcps.ps.server import AsyncPiece, RoundPiece
    from hpcps.ps.stale import _set_version, _version_of, serve_pieces
    plan = MessagePlan.build(64, [0, 1], [0, 1], bucket_bytes=4 * 16)
    init = np.arange(64, dtype=np.float32)
    opt = OptimizerConfig("sgd", lr=0.1)
    codecs = [make_codec("none"), make_codec("none")]
    mine = serve_pieces("ssp", 3, plan, 1, init, [1, 3], opt, codecs, iterations=2)
    assert sorted(mine) == [p.index for p in plan.pieces if p.server == 1] and mine
    for q, state in mine.items():
        assert isinstance(state, RoundPiece) and state.rounds == 2          # a run of 2 steps: 2 rounds
        np.testing.assert_array_equal(state.params, init[plan.pieces[q].start:plan.pieces[q].stop])
    assert {s.rounds for s in serve_pieces("ssp", 3, plan, 1, init, [1, 3], opt, codecs).values()} == {4}
    assert {s.rounds for s in serve_pieces("ssp", 3, plan, 1, init, [1, 3], opt, codecs,
                                           iterations=0).values()} == {1}
    assert all(isinstance(s, AsyncPiece) for s in serve_pieces("asp", 0, plan, 0, init, [1, 3], opt, codecs).values())
    with pytest.raises(ValueError, match=r"^no stale exchange for 'bsp'$"):
        serve_pieces("bsp", 0, plan, 0, init, [1, 3], opt, codecs)
    buf = np.zeros(12, dtype=np.uint8)
    _set_version(buf, 70000)
    assert _version_of(buf) == 70000 and not buf[:8].any()
    assert buf[-4:].view(np.int32)[0] == 70000


def test_an_async_piece_names_the_push_a_non_finite_gradient_came_with():
    import torch

    from hpcps.config.job import OptimizerConfig
    from hpcps.ps.server import AsyncPiece, NonFiniteGradient
    piece = Piece(0, 0, 0, 0, 4)
    a = AsyncPiece(piece, np.zeros(4, np.float32), [1, 3], OptimizerConfig("sgd", lr=1.0))
    np.testing.assert_array_equal(a.weights, [0.25, 0.75])
    a.rows[0] = 4.0
    assert a.apply(0) == 0 and a.apply(0) == 1
    np.testing.assert_array_equal(a.params, [-2.0] * 4)          # two steps of 1.0 * 0.25 * 4
    a.rows[1] = -1.0
    assert a.apply(1) == 2
    a.rows[0, 2] = np.nan
    with pytest.raises(NonFiniteGradient) as e:
        a.apply(0)
    assert e.value.iteration == 2                                  # worker 0's third push
    assert str(e.value) == "non-finite gradient of worker 0 in piece 0 (elements 0..3, 1 not finite)"
    assert a.version == 3 and a.applied.tolist() == [2, 1]
    assert torch.isfinite(torch.from_numpy(a.params)).all()


def test_checkpoints_are_written_in_the_newest_hdf5_format(tmp_path):
    import h5py

    from hpcps.ps.checkpoint import Checkpoint, write_checkpoint
    path = write_checkpoint(tmp_path, Checkpoint(1, "j", {}, {}, np.zeros(4, np.float32))).path
    with h5py.File(path) as f:
        assert f.id.get_create_plist().get_version()[0] == 3       # superblock version 3: libver="latest"


def test_an_exchange_refuses_more_pieces_than_mpi_has_tags_for():
    from mpi4py import MPI

    from hpcps.ps.exchange import GATHER_TAG, PULL_TAG, PUSH_TAG, Exchange
    from hpcps.ps.plan import MessagePlan
    assert (PULL_TAG, PUSH_TAG, GATHER_TAG) == (8192, 16384, 24576)

    class Comm:
        def __init__(self, tag_ub):
            self.tag_ub = tag_ub

        def Get_rank(self):
            return 0

        def Get_attr(self, key):
            assert key == MPI.TAG_UB
            return self.tag_ub
    plan = MessagePlan.build(64, [0], [0], bucket_bytes=4 * 16)          # 4 pieces
    with pytest.raises(ValueError, match=r"^4 pieces need more message tags than this MPI offers; "
                                         r"raise \[exchange\] bucket_mb$"):
        Exchange(Comm(GATHER_TAG + 3), plan, 1, sleep_wait=False)
    ex = Exchange(Comm(GATHER_TAG + 4), plan, 1, sleep_wait=False)
    assert ex.sleep_wait is False and ex.is_worker and ex.row == 0 and ex._wake is None
    ex = Exchange(Comm(GATHER_TAG + 4), plan, 1, sleep_wait=True, emulator=object())
    assert ex.sleep_wait is True and isinstance(ex._wake, SocketWake) and ex._wake.poll_s == 1e-4


def test_a_stale_exchange_refuses_bsp_s_pull_call():
    """expect_pulls is bsp's (pulls written into the parameters between steps): a policy mixing them up
    fails at once instead of waiting for pulls that never come."""
    from hpcps.ps.stale import StaleExchange
    with pytest.raises(RuntimeError,
                       match="^ssp and asp workers read pulls at begin_clock, not into their parameters$"):
        StaleExchange.expect_pulls(object.__new__(StaleExchange), 0)


class _SlowRequest:
    """An MPI request that completes on its third Test()."""

    def __init__(self):
        self.tests = 0

    def Test(self):
        self.tests += 1
        return self.tests >= 3


@pytest.mark.parametrize("sleep_wait", [True, False])
def test_waiting_on_a_request_pauses_between_tests_only_when_ranks_outnumber_cores(sleep_wait):
    from types import SimpleNamespace

    from hpcps.ps.exchange import Exchange
    pauses = []
    wake = SimpleNamespace(pause=lambda: pauses.append("pause")) if sleep_wait else None
    req = _SlowRequest()
    Exchange._wait_request(SimpleNamespace(_wake=wake), req)
    assert req.tests == 3
    assert pauses == (["pause", "pause"] if sleep_wait else [])


def test_stopping_early_with_a_send_in_flight_is_refused_saying_so():
    """stop_early cancels the receives a settled rank still has posted; a send in flight means the rank
    is not settled, and cancelling it would lose a message: refused."""
    from types import SimpleNamespace

    from hpcps.ps.stale import StaleExchange
    ex = StaleExchange.__new__(StaleExchange)
    ex._reqs = [object()]
    ex._done = [(None, (0, SimpleNamespace(direction="send")))]
    with pytest.raises(RuntimeError) as e:
        ex.stop_early()
    assert str(e.value) == "stop_early on a rank that is not settled: a send is still in flight"
