"""Checkpoint files (hpcps/ps/checkpoint.py) and the servers' optimiser state they hold, without MPI."""

import json
import re

import h5py
import numpy as np
import pytest
import torch

from hpcps.config.errors import ConfigError
from hpcps.config.job import Job, OptimizerConfig, TrainingConfig
from hpcps.ps.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_resumable,
    checkpoint_path,
    identity_of,
    latest_checkpoint,
    list_checkpoints,
    load_resume,
    read_checkpoint,
    share_residuals,
    write_checkpoint,
)
from hpcps.ps.plan import Piece, cut_pieces
from hpcps.ps.server import ServedPiece
from hpcps.ps.sharding import plan_shards

N = 3000


def job(**model) -> Job:
    return Job("j", "digits", OptimizerConfig("sgd", lr=0.1, momentum=0.9),
               TrainingConfig(global_batch=64, iterations=10), model=model or {"hidden": 32})


def make(iteration: int, n: int = N, seed: int = 0, residuals: bool = False) -> Checkpoint:
    rng = np.random.default_rng(seed + iteration)
    return Checkpoint(
        iteration, "j", identity_of(job()),
        {"n_ranks": 3, "servers": [1, 2], "workers": [[0, 5], [1, 17], [2, 42]], "codecs": ["none"] * 3},
        rng.standard_normal(n).astype(np.float32),
        {"exp_avg": rng.standard_normal(n).astype(np.float32), "exp_avg_sq": rng.random(n).astype(np.float32)},
        {"step": np.array(float(iteration), dtype=np.float32)},
        rng.standard_normal((3, n)).astype(np.float32) if residuals else None,
        {"norm.running_mean": np.arange(4, dtype=np.float32), "norm.num_batches_tracked": np.array(iteration)},
        rng.integers(0, 255, (3, 16), dtype=np.uint8))


def test_a_checkpoint_reads_back_as_written(tmp_path):
    ckpt = make(7, residuals=True)
    written = write_checkpoint(tmp_path, ckpt)
    assert written.path == checkpoint_path(tmp_path, 7) == tmp_path / "ckpt-00000007.h5"
    back = read_checkpoint(written.path)
    assert back.path == written.path
    assert back.iteration == 7 and back.job_name == "j" and back.identity == ckpt.identity
    assert back.schedule == ckpt.schedule and back.n_params == N
    assert np.array_equal(back.params, ckpt.params)
    assert sorted(back.optimizer_vectors) == ["exp_avg", "exp_avg_sq"]
    for k, v in ckpt.optimizer_vectors.items():
        assert np.array_equal(back.optimizer_vectors[k], v)
    assert back.optimizer_scalars["step"].dtype == np.float32 and back.optimizer_scalars["step"] == 7.0
    assert np.array_equal(back.residuals, ckpt.residuals)
    assert np.array_equal(back.buffers["norm.running_mean"], np.arange(4))
    assert back.buffers["norm.num_batches_tracked"].shape == () and back.buffers["norm.num_batches_tracked"] == 7
    assert np.array_equal(back.rng_torch, ckpt.rng_torch)
    with h5py.File(written.path) as f:          # self-describing, checksummed
        assert f["params"].fletcher32 and "meaning" in f["params"].attrs and f.attrs["complete"] == 1
    # when it was written: the local time with its offset, read back as written
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", back.created), back.created
    dated = read_checkpoint(write_checkpoint(tmp_path / "dated", Checkpoint(**{**ckpt.__dict__,
                                                                                "created": "then"})).path)
    assert dated.created == "then"


def test_the_newest_two_are_kept_and_leftovers_removed(tmp_path):
    stale = tmp_path / ".ckpt-00000003.h5.999-abcd.tmp"      # what a writer killed mid-file leaves
    stale.write_bytes(b"\x89HDF half")
    for it in (2, 4, 6):
        written = write_checkpoint(tmp_path, make(it))
    assert [it for it, _ in list_checkpoints(tmp_path)] == [6, 4]
    assert written.removed == (checkpoint_path(tmp_path, 2),)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000004.h5", "ckpt-00000006.h5"]


def test_an_optimiser_vector_of_the_wrong_shape_is_refused_naming_it(tmp_path):
    path = write_checkpoint(tmp_path, make(3)).path
    with h5py.File(path, "r+") as f:
        del f["optimizer/exp_avg_sq"]
        f["optimizer"].create_dataset("exp_avg_sq", data=np.zeros(N - 1, np.float32))
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(e.value) == f"{path}: optimizer/exp_avg_sq is float32 ({N - 1},), expected float32 ({N},)"


def test_a_leftover_that_vanishes_while_leftovers_are_removed_is_no_error(tmp_path, monkeypatch):
    """Two writers may clean one directory: a temporary file listed, then removed by the other writer
    before this one gets to it, is not an error."""
    from pathlib import Path
    listed = Path.iterdir

    def with_a_phantom(self):
        yield from listed(self)
        if self == tmp_path:
            yield tmp_path / ".ckpt-00000001.h5.123-gone.tmp"         # listed, already gone
    monkeypatch.setattr(Path, "iterdir", with_a_phantom)
    assert write_checkpoint(tmp_path, make(2)).path == checkpoint_path(tmp_path, 2)


def test_later_checkpoints_of_an_abandoned_run_are_set_aside(tmp_path):
    """A run resumed from iteration 4 writes 5: the 6 of the run it branched from must not win a resume."""
    for it in (4, 6):
        write_checkpoint(tmp_path, make(it))
    written = write_checkpoint(tmp_path, make(5))
    assert written.set_aside == (tmp_path / "ckpt-00000006.h5.superseded",)
    assert latest_checkpoint(tmp_path)[0].iteration == 5


def test_a_truncated_checkpoint_is_skipped(tmp_path):
    write_checkpoint(tmp_path, make(10))
    newest = write_checkpoint(tmp_path, make(20)).path
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])                 # a copy cut short, say
    ckpt, skipped = latest_checkpoint(tmp_path)
    assert ckpt.iteration == 10
    assert [p for p, _ in skipped] == [newest] and "unreadable" in skipped[0][1]


def test_a_flipped_byte_fails_the_checksum(tmp_path):
    write_checkpoint(tmp_path, make(10))
    newest = write_checkpoint(tmp_path, make(20)).path
    with h5py.File(newest) as f:
        offset = f["optimizer"]["exp_avg"].id.get_chunk_info(0).byte_offset
    raw = bytearray(newest.read_bytes())
    raw[offset + 100] ^= 0x10
    newest.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(newest)
    assert latest_checkpoint(tmp_path)[0].iteration == 10


def test_a_file_without_its_complete_mark_is_skipped(tmp_path):
    write_checkpoint(tmp_path, make(10))
    newest = write_checkpoint(tmp_path, make(20)).path
    with h5py.File(newest, "a") as f:
        del f.attrs["complete"]
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(newest)
    assert str(e.value) == f"{newest}: incomplete: its writer never finished it"
    assert latest_checkpoint(tmp_path)[0].iteration == 10


def test_another_format_version_or_no_file_is_refused_naming_the_file(tmp_path):
    path = write_checkpoint(tmp_path, make(10)).path
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 99
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(e.value) == f"{path}: checkpoint format version 99, this hpcps reads 1"
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "ckpt-00000011.h5")
    assert str(e.value) == f"{tmp_path / 'ckpt-00000011.h5'}: no such file"


def test_a_dataset_of_the_wrong_size_is_refused(tmp_path):
    path = write_checkpoint(tmp_path, make(10)).path
    with h5py.File(path, "a") as f:
        f.attrs["n_params"] = N + 1
    with pytest.raises(CheckpointError, match=r"params is float32 \(3000,\), expected float32 \(3001,\)"):
        read_checkpoint(path)


def test_no_good_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        latest_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match=r"no complete checkpoint \(ckpt-NNNNNNNN.h5\)$"):
        latest_checkpoint(tmp_path)
    (tmp_path / "ckpt-00000005.h5").write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError) as e:
        load_resume(tmp_path)
    assert "ckpt-00000005.h5: unreadable" in str(e.value) and "\n" not in str(e.value)
    assert load_resume(write_checkpoint(tmp_path, make(3)).path)[0].iteration == 3   # a file, directly


def test_only_the_same_model_data_and_optimiser_may_resume(tmp_path):
    ckpt = read_checkpoint(write_checkpoint(tmp_path, make(3)).path)
    check_resumable(ckpt, job())
    with pytest.raises(CheckpointError, match="written by another job: its model is") as e:
        check_resumable(ckpt, job(hidden=64))
    assert str(e.value).startswith(f"{ckpt.path}: written by another job")
    with pytest.raises(CheckpointError, match=f"holds {N} parameters, this job's model has 10"):
        check_resumable(ckpt, job(), n_params=10)
    other = Job("j", "digits", OptimizerConfig("adam", lr=0.1), TrainingConfig(global_batch=8, iterations=1),
                model={"hidden": 32})
    with pytest.raises(CheckpointError, match='its optimizer is "sgd", this job\'s is "adam"'):
        check_resumable(ckpt, other)


def test_every_refusal_to_resume_names_the_checkpoint_file_and_an_unsaved_one_says_so(tmp_path):
    ckpt = read_checkpoint(write_checkpoint(tmp_path, make(3)).path)
    for args in ((job(hidden=64),), (job(), 10), (job(), N, {})):
        with pytest.raises(CheckpointError) as e:
            check_resumable(ckpt, *args)
        assert str(e.value).startswith(f"{ckpt.path}: "), e.value
    with pytest.raises(CheckpointError) as e:
        check_resumable(make(3), job(), 10)              # never written: no path
    assert str(e.value).startswith("<checkpoint>: holds")


def test_residuals_are_kept_as_float32_whatever_they_came_in(tmp_path):
    ckpt = make(4, residuals=True)
    wide = Checkpoint(**{**ckpt.__dict__, "residuals": ckpt.residuals.astype(np.float64)})
    back = read_checkpoint(write_checkpoint(tmp_path, wide).path)
    assert back.residuals.dtype == np.float32 and np.array_equal(back.residuals, ckpt.residuals)


def test_a_checkpoints_header_does_not_depend_on_the_order_of_the_schedules_keys(tmp_path):
    """Equal states give equal files' headers: the schedule is written with sorted keys."""
    ckpt = make(5)
    turned = Checkpoint(**{**ckpt.__dict__, "schedule": dict(reversed(list(ckpt.schedule.items())))})
    texts = []
    for name, c in (("a", ckpt), ("b", turned)):
        (tmp_path / name).mkdir()
        with h5py.File(write_checkpoint(tmp_path / name, c).path) as f:
            texts.append(f.attrs["schedule"])
    assert texts[0] == texts[1] == json.dumps(ckpt.schedule, sort_keys=True)


def test_only_a_model_with_the_same_buffers_may_resume(tmp_path):
    """Parameters alike, statistics not (GroupNorm's code swapped for BatchNorm's): refused, naming them."""
    ckpt = read_checkpoint(write_checkpoint(tmp_path, make(3)).path)
    same = {"norm.running_mean": (4,), "norm.num_batches_tracked": ()}
    check_resumable(ckpt, job(), N, same)

    def refused(buffers):
        with pytest.raises(CheckpointError) as e:
            check_resumable(ckpt, job(), N, buffers)
        return str(e.value)
    start = f"{ckpt.path}: holds other model buffers than this job's model: "
    assert refused({**same, "norm.running_mean": (5,)}) == start + "norm.running_mean has shape [4] there, [5] here"
    assert refused({"norm.running_mean": (4,)}) == start + "norm.num_batches_tracked only in the checkpoint"
    assert refused({**same, "a": (1,)}) == start + "a only in the model"
    assert refused({}) == start + ("norm.num_batches_tracked only in the checkpoint; "
                                   "norm.running_mean only in the checkpoint")
    # four differences: three named, and the fourth counted
    assert refused({"norm.running_mean": (5,), "b0": (1,), "b1": (1,)}) == start + (
        "b0 only in the model; b1 only in the model; norm.num_batches_tracked only in the checkpoint; and 1 more")
    many = {f"b{i}": (1,) for i in range(5)}
    assert refused({**same, **many}) == start + ("b0 only in the model; b1 only in the model; b2 only in the model; "
                                                 "and 2 more")


def test_shared_residuals_keep_what_the_servers_are_owed():
    rng = np.random.default_rng(1)
    n = 200
    saved = rng.standard_normal((3, n)).astype(np.float32)
    old, new = [5, 17, 42], [30, 34]
    pieces = cut_pieces(plan_shards(n, [0, 1]), 48)
    carries = np.ones((2, len(pieces)), dtype=bool)
    carries[0, 0] = False                      # worker 0 serves piece 0 itself: no encoder there
    rows, dropped = share_residuals(saved, old, new, carries, pieces)
    owed = (np.array(old)[:, None] / 64 * saved.astype(np.float64)).sum(axis=0)
    now = (np.array(new)[:, None] / 64 * rows.astype(np.float64)).sum(axis=0)
    np.testing.assert_allclose(now, owed, rtol=1e-5, atol=1e-6)
    assert dropped == 0 and not rows[0, pieces[0].start:pieces[0].stop].any()
    carries[:, 1] = False
    _, dropped = share_residuals(saved, old, new, carries, pieces)
    assert dropped == pieces[1].size


@pytest.mark.parametrize("opt", [OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=1e-3),
                                 OptimizerConfig("adam", lr=0.01)], ids=["sgd-momentum", "adam"])
def test_optimiser_state_moves_between_cuts_exactly(opt):
    """Two servers' pieces stepped 3 times; their state, joined into whole vectors and cut again as
    another schedule's three pieces, steps on exactly like one piece over the whole vector."""
    rng = np.random.default_rng(0)
    n = 96
    init = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(6)]

    def step(pieces, g):
        for s in pieces:
            s.rows[0][:] = g[s.piece.start:s.piece.stop]
            s.aggregate_and_step()

    whole = [ServedPiece(Piece(0, 0, 0, 0, n), init, [1], opt)]
    a = [ServedPiece(Piece(0, 0, 0, 0, 32), init[:32], [1], opt),
         ServedPiece(Piece(1, 1, 1, 32, n), init[32:], [1], opt)]
    for g in grads[:3]:
        step(whole, g)
        step(a, g)
    vectors = {k: np.concatenate([s.optimizer_state()[k] for s in a])
               for k, v in a[0].optimizer_state().items() if v.ndim == 1}
    scalars = {k: v for k, v in a[0].optimizer_state().items() if v.ndim == 0}
    assert sorted(vectors) == (["momentum_buffer"] if opt.name == "sgd" else ["exp_avg", "exp_avg_sq"])
    params = np.concatenate([s.params for s in a])
    cuts = [(0, 16), (16, 80), (80, n)]
    b = [ServedPiece(Piece(i, i, i, lo, hi), params[lo:hi], [1], opt) for i, (lo, hi) in enumerate(cuts)]
    for s in b:
        s.load_optimizer_state({**{k: v[s.piece.start:s.piece.stop] for k, v in vectors.items()}, **scalars})
    for g in grads[3:]:
        step(whole, g)
        step(b, g)
    assert np.array_equal(np.concatenate([s.params for s in b]), whole[0].params)


def test_a_non_finite_gradient_is_not_applied():
    server = ServedPiece(Piece(3, 0, 0, 64, 67), np.ones(3, np.float32), [1, 1], OptimizerConfig("sgd", lr=0.5))
    server.rows[0][:] = [1.0, np.nan, 0.0]
    with pytest.raises(FloatingPointError, match=r"piece 3 \(elements 64..66, 1 not finite\)"):
        server.aggregate_and_step()
    assert np.array_equal(server.params, np.ones(3))
    server.rows[0][:] = [1.0, np.inf, 0.0]
    server.rows[1][:] = [1.0, -np.inf, 0.0]
    with pytest.raises(FloatingPointError):
        server.aggregate_and_step()


def test_identity_is_plain_json():
    ident = identity_of(job())
    assert json.loads(json.dumps(ident)) == ident and ident["model"] == {"hidden": 32}
    assert torch.get_rng_state().dtype == torch.uint8     # what /rng/torch holds


def test_the_rank_watch_names_a_peer_that_died(capfd):
    """hpcps.comm.watch on one process, watching a stand-in peer that is killed."""
    import signal
    import subprocess
    import sys
    import time

    from mpi4py import MPI

    from hpcps.comm.watch import RankWatch, process_alive
    peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = []
    watch = RankWatch(MPI.COMM_SELF, "hpcps.train", interval_s=0.02, abort=lambda: ended.append(time.monotonic()))
    assert watch._thread is None                      # no peer on this node
    watch.peers = [(2, peer.pid)]
    watch.start()
    time.sleep(0.1)
    assert not ended and process_alive(peer.pid)
    peer.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    peer.wait()                                       # reaped, as a launcher would
    watch._thread.join(timeout=5)
    assert ended and ended[0] - t0 < 1 and not process_alive(peer.pid)
    assert f"hpcps.train: rank 2 (pid {peer.pid}) on " in capfd.readouterr().err
    watch.stop()


def test_job_checkpoint_keys():
    from hpcps.config import ConfigError
    from hpcps.config.job import parse_job
    base = {"name": "j", "workload": "digits", "optimizer": {"name": "sgd", "lr": 0.1},
            "training": {"global_batch": 8, "iterations": 5}}
    job_ = parse_job(base, "j.toml")
    assert job_.training.checkpoint_every == 0 and job_.training.checkpoint_every_s == 600.0
    job_ = parse_job({**base, "training": {**base["training"], "checkpoint_every": 50, "checkpoint_every_s": 0}}, "j")
    assert job_.training.checkpoint_every == 50 and job_.training.checkpoint_every_s == 0.0
    with pytest.raises(ConfigError, match="'training.checkpoint_every'.*>= 0"):
        parse_job({**base, "training": {**base["training"], "checkpoint_every": -1}}, "j.toml")


def test_a_checkpoint_that_cannot_be_written_names_the_flag_and_the_file(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the checkpoint directory should be")
    with pytest.raises(ConfigError) as e:
        write_checkpoint(blocker, make(4))
    assert str(e.value).startswith(f"--checkpoint: cannot write {blocker / 'ckpt-00000004.h5'}: ")
    assert blocker.read_text() == "a file where the checkpoint directory should be"


def test_optimiser_state_of_another_size_is_refused_naming_it():
    opt = OptimizerConfig("adam", lr=0.1)
    piece = ServedPiece(Piece(0, 0, 0, 0, 8), np.zeros(8, np.float32), [1], opt)
    with pytest.raises(ValueError) as e:
        piece.load_optimizer_state({"step": np.array(1.0), "exp_avg": np.zeros(9, np.float32)})
    assert str(e.value) == "optimiser state 'exp_avg' has shape (9,), expected () or (8,)"


def _damage(path, how):
    with h5py.File(path, "r+") as f:
        if how in ("params", "optimizer/exp_avg"):
            values = f[how][...]
            values[7] = np.nan if how == "params" else np.inf
            del f[how]
            f[how] = values
        elif how == "identity":
            f.attrs["identity"] = "[1]"
        elif how == "schedule":
            s = json.loads(f.attrs["schedule"])
            s["workers"] = "all of them"
            f.attrs["schedule"] = json.dumps(s)
        elif how == "iteration":
            f.attrs["iteration"] = -4
        elif how == "rng":
            del f["rng/torch"]
            f["rng/torch"] = np.zeros(16, np.uint8)


@pytest.mark.parametrize("how, words", [
    ("params", "params hold 1 values that are NaN or infinite"),
    ("optimizer/exp_avg", "optimizer/exp_avg hold 1 values that are NaN or infinite"),
    ("identity", "its identity attribute is not a JSON object"),
    ("schedule", "is not a schedule record"),
    ("iteration", "its iteration is -4, not a count"),
    ("rng", "rng/torch is uint8 (16,)"),
])
def test_a_damaged_checkpoint_is_refused_and_the_one_before_it_is_resumed(tmp_path, how, words):
    """What a run writes is whole and finite: a NaN or a layout no run writes is damage. A NaN state
    was resumed into a run that diverged at once and named this file its last good checkpoint; a JSON
    list for the identity stopped rank 0 with a traceback while the other ranks waited for ever."""
    write_checkpoint(tmp_path, make(10))
    newest = write_checkpoint(tmp_path, make(20)).path
    _damage(newest, how)
    with pytest.raises(CheckpointError, match=re.escape(words)):
        read_checkpoint(newest)
    ckpt, skipped = latest_checkpoint(tmp_path)
    assert ckpt.iteration == 10 and [p for p, _ in skipped] == [newest]


def test_generator_states_of_another_length_are_refused():
    from hpcps.ps.checkpoint import check_rng_states
    ckpt = make(3)                                   # states of 16 bytes; this PyTorch's are longer
    with pytest.raises(CheckpointError, match="generator states are 16 bytes long, this PyTorch's are"):
        check_rng_states(ckpt)
    ckpt.rng_torch = np.stack([torch.get_rng_state().numpy()] * 3)
    check_rng_states(ckpt)
