"""Push codecs (hpcps/ps/codec.py): each against a NumPy reference written here, error feedback's
bookkeeping over many steps, zero gradients, and float32 sums at the server."""

import numpy as np
import pytest

from hpcps.config.job import OptimizerConfig
from hpcps.config.schedule import CODECS as CONFIG_CODECS
from hpcps.ps.codec import CODECS, FP16_MAX, INT8_CHUNK, SIGN_CHUNK, TOPK_FRACTION, Codec, make_codec
from hpcps.ps.plan import Piece
from hpcps.ps.server import ServedPiece

LOSSY = [name for name, cls in CODECS.items() if cls.lossy]
# Sizes: one value, fewer than a byte of signs, a chunk and a bit, several chunks with a short tail.
SIZES = [1, 5, INT8_CHUNK + 3, 3 * INT8_CHUNK + SIGN_CHUNK + 77]


# -- NumPy references ---------------------------------------------------------------------------------
def ref_fp16(x):
    h = np.clip(x, -FP16_MAX, FP16_MAX).astype(np.float16)       # NumPy rounds to nearest even
    return h.tobytes(), h.astype(np.float32)


def ref_bf16(x):
    u = x.view(np.uint32).astype(np.uint64)
    top = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)   # round to nearest, ties to even
    return top.tobytes(), (top.astype(np.uint32) << 16).view(np.float32)


def ref_int8(x, chunk=INT8_CHUNK):
    scales, qs, out = [], [], []
    for i in range(0, len(x), chunk):
        c = x[i:i + chunk]
        s = np.float32(np.abs(c).max()) / np.float32(127)
        q = np.rint(c / s) if s > 0 else np.zeros_like(c)
        assert np.abs(q).max() <= 127
        scales.append(s)
        qs.append(q.astype(np.int8))
        out.append(q.astype(np.float32) * s)
    wire = np.array(scales, np.float32).tobytes() + np.concatenate(qs).tobytes()
    return wire, np.concatenate(out)


def to_bfloat16_bits(x):
    """float32 -> the 16 top bits of its round-to-nearest-even bfloat16 (finite values)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def ref_sign(x, chunk=SIGN_CHUNK):
    scales, out = [], []
    for i in range(0, len(x), chunk):
        c = x[i:i + chunk]
        s = np.sqrt((c * c).sum(dtype=np.float32) / np.float32(len(c)))      # root mean square
        b = to_bfloat16_bits(s)
        s16 = (np.uint32(b) << np.uint32(16)).view(np.float32)               # as the wire carries it
        scales.append(b)
        out.append(np.where(c >= 0, s16, -s16).astype(np.float32))
    bits = np.packbits(x >= 0)
    return np.array(scales, np.uint16).tobytes() + bits.tobytes(), np.concatenate(out)


def ref_topk(x, fraction=TOPK_FRACTION):
    k = min(len(x), max(1, int(np.ceil(fraction * len(x)))))
    idx = np.sort(np.argsort(-np.abs(x), kind="stable")[:k]).astype(np.int32)
    out = np.zeros_like(x)
    out[idx] = x[idx]
    return idx.tobytes() + x[idx].tobytes(), out


REFERENCES = {"fp16": ref_fp16, "bf16": ref_bf16, "int8": ref_int8, "sign": ref_sign, "topk": ref_topk}


def grads(n, steps, seed=0):
    """Gradients of changing scale (1e-3 to 1e3 across steps), a few exact zeros and ties."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        g[rng.random(n) < 0.05] = 0
        yield g


def roundtrip(codec, encoder, g):
    wire = encoder.encode(g)
    row = np.empty(len(g), np.float32)
    buf = codec.receive_buffer(row)
    buf[...] = wire          # what MPI would move
    codec.decode_into(buf, row)
    return wire, row


# -- the tests ----------------------------------------------------------------------------------------
def test_the_config_knows_every_codec():
    assert tuple(CODECS) == CONFIG_CODECS
    assert {"none", "fp16", "bf16", "int8", "sign"} <= set(CODECS)


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("n", SIZES)
def test_wire_is_bytes_of_the_announced_size(name, n):
    codec = make_codec(name)
    g = next(grads(n, 1))
    wire = codec.encoder(n).encode(g)
    assert wire.nbytes == codec.wire_nbytes(n)
    assert codec.receive_buffer(np.empty(n, np.float32)).nbytes == codec.wire_nbytes(n)
    if codec.lossy:
        assert wire.dtype == np.uint8 and wire.ndim == 1


def test_sizes_on_the_wire():
    n = 1 << 20
    raw = 4 * n
    assert make_codec("none").wire_nbytes(n) == raw
    assert make_codec("fp16").wire_nbytes(n) == make_codec("bf16").wire_nbytes(n) == raw // 2
    assert raw / make_codec("int8").wire_nbytes(n) > 3.98
    assert raw / make_codec("sign").wire_nbytes(n) > 25    # the 25x: 1/8 + 2/64 bytes a value
    assert raw / make_codec("topk").wire_nbytes(n) > 49


@pytest.mark.parametrize("name", LOSSY)
@pytest.mark.parametrize("n", SIZES)
def test_first_push_matches_the_reference(name, n):
    """With a zero residual the first push is the plain codec: bytes and decoded values as the
    reference computes them."""
    codec = make_codec(name)
    rng = np.random.default_rng(n)
    g = (rng.standard_normal(n) * 3).astype(np.float32)
    g[::7] = 0
    if n > 10:
        g[3] = -g[4]          # a tie in magnitude (topk keeps the earlier position)
    want_wire, want = REFERENCES[name](g)
    wire, got = roundtrip(codec, codec.encoder(n), g)
    assert wire.tobytes() == want_wire
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(codec.roundtrip(g), want)


def test_sign_keeps_each_chunks_length():
    """A decoded sign chunk is as long (L2) as the chunk it encodes, to the bfloat16 rounding of its scale
    (at most 2^-8 of it), whatever the spread of its values: the mean |x| would shorten a chunk of a few
    large values among small ones (here by 3x) and error feedback would hand the rest on late
    (results/sign_scale.md)."""
    codec = make_codec("sign")
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(5 * SIGN_CHUNK + 17) * 1e-3).astype(np.float32)
    x[::40] *= 1000                                  # a few large values in every chunk
    y = codec.roundtrip(x)
    for a in range(0, len(x), SIGN_CHUNK):
        c, d = x[a:a + SIGN_CHUNK], y[a:a + SIGN_CHUNK]
        assert np.linalg.norm(d) == pytest.approx(np.linalg.norm(c), rel=2 ** -8)
        assert np.array_equal(np.sign(d), np.where(c >= 0, 1, -1))
    assert np.linalg.norm(x[:SIGN_CHUNK]) > 3 * np.abs(x[:SIGN_CHUNK]).mean() * np.sqrt(SIGN_CHUNK)


@pytest.mark.parametrize("name", LOSSY)
def test_each_push_is_the_reference_applied_to_gradient_plus_residual(name):
    codec = make_codec(name)
    n = SIZES[-1]
    enc = codec.encoder(n)
    residual = np.zeros(n, np.float32)
    for g in grads(n, 20, seed=1):
        acc = g + residual
        want_wire, want = REFERENCES[name](acc)
        wire, got = roundtrip(codec, enc, g)
        assert wire.tobytes() == want_wire
        np.testing.assert_array_equal(got, want)
        residual = acc - want
        np.testing.assert_array_equal(enc.state(), residual)


@pytest.mark.parametrize("name", LOSSY)
def test_applied_updates_plus_residual_add_up_to_the_gradients(name):
    """Per worker over many steps: sum of what the server decoded + the final residual = sum of the
    raw gradients, to float32 rounding of the running values."""
    codec = make_codec(name)
    n, steps = SIZES[-1], 300
    workers = [codec.encoder(n) for _ in range(3)]
    raw = np.zeros((3, n))
    applied = np.zeros((3, n))
    scale = np.zeros(n)
    for w, enc in enumerate(workers):
        for g in grads(n, steps, seed=10 + w):
            _, got = roundtrip(codec, enc, g)
            raw[w] += g
            applied[w] += got
            scale = np.maximum(scale, np.abs(g))
    for w, enc in enumerate(workers):
        residual = enc.state().astype(np.float64)
        # each step rounds acc - decoded once in float32: at most half an ulp of the running values
        tol = steps * np.finfo(np.float32).eps * (np.abs(residual) + scale).max()
        np.testing.assert_allclose(applied[w] + residual, raw[w], rtol=0, atol=tol)
        assert np.abs(applied[w] + residual - raw[w]).max() < 1e-3 * np.abs(raw[w]).max()


@pytest.mark.parametrize("name", LOSSY)
def test_zero_gradients_build_up_no_error(name):
    codec = make_codec(name)
    n = SIZES[-1]
    enc = codec.encoder(n)
    zero = np.zeros(n, np.float32)
    for _ in range(50):                                  # from the start: zeros go out, nothing is kept
        _, got = roundtrip(codec, enc, zero)
        assert not got.any() and not enc.state().any()
    for g in grads(n, 5, seed=3):                        # after real gradients the residual only shrinks
        roundtrip(codec, enc, g)
    norms = [np.linalg.norm(enc.state())]
    sent = np.zeros(n)
    for _ in range(200):
        _, got = roundtrip(codec, enc, zero)
        sent += got
        norms.append(np.linalg.norm(enc.state()))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(norms, norms[1:]))
    assert norms[-1] < norms[0]


@pytest.mark.parametrize("name", LOSSY)
def test_residual_saved_and_restored(name):
    codec = make_codec(name)
    n = SIZES[2]
    a, b = codec.encoder(n), codec.encoder(n)
    gs = list(grads(n, 6, seed=4))
    for g in gs[:5]:
        a.encode(g)
    b.load_state(a.state())
    assert np.array_equal(a.encode(gs[5]), b.encode(gs[5]))
    b.load_state(None)
    assert not b.state().any()
    with pytest.raises(ValueError):
        b.load_state(np.zeros(n + 1, np.float32))


def test_identity_sends_the_gradient_itself():
    codec = make_codec("none")
    g = np.arange(10, dtype=np.float32)
    enc = codec.encoder(10)
    assert enc.encode(g) is g and enc.state() is None and not enc.lossy
    row = np.zeros(10, np.float32)
    assert codec.receive_buffer(row) is row


def test_unknown_codec():
    with pytest.raises(ValueError, match="none, fp16, bf16, int8, sign"):
        make_codec("fp8")


@pytest.mark.parametrize("magnitude", [6.0e4, 1.0e5])
def test_64_fp16_workers_sum_to_no_inf_at_the_server(magnitude):
    """64 workers push values near (or past) fp16's largest: the server decodes each push into float32
    and sums there, so the weighted mean is finite and right; past 65504 the push saturates and the
    worker keeps the excess."""
    workers, n = 64, 1000
    codec = make_codec("fp16")
    piece = Piece(0, 0, 0, 0, n)
    batches = [1 + (w % 5) for w in range(workers)]
    server = ServedPiece(piece, np.zeros(n, np.float32), batches, OptimizerConfig("sgd", lr=1.0),
                         [codec] * workers)
    rng = np.random.default_rng(0)
    pushes = (magnitude * rng.uniform(0.9, 1.0, (workers, n)) * rng.choice([-1, 1], n)).astype(np.float32)
    encoders = [codec.encoder(n) for _ in range(workers)]
    for w in range(workers):
        server.wires[w][...] = encoders[w].encode(pushes[w])
        complete = server.push_arrived(w)
    assert complete
    assert server.rows.dtype == np.float32 and np.isfinite(server.rows).all()
    server.aggregate_and_step()
    assert np.isfinite(server.params).all()
    sent = np.clip(pushes.astype(np.float64), -FP16_MAX, FP16_MAX)
    k = np.array(batches, np.float64)[:, None]
    expected = -(k * sent).sum(0) / k.sum()
    np.testing.assert_allclose(server.params, expected, rtol=1e-3)
    for w in range(workers):
        np.testing.assert_allclose(encoders[w].state() + server.rows[w], pushes[w], rtol=1e-6)
    assert float(np.abs(pushes).sum(0).max()) > FP16_MAX      # a sum in fp16 would have overflowed


@pytest.mark.parametrize("name", LOSSY)
def test_server_decodes_each_workers_own_codec(name):
    """Workers with different codecs push the same piece; each row is its worker's decoding."""
    n = SIZES[-1]
    codecs = [make_codec("none"), make_codec(name)]
    piece = Piece(0, 0, 0, 0, n)
    server = ServedPiece(piece, np.zeros(n, np.float32), [1, 1], OptimizerConfig("sgd", lr=1.0), codecs)
    g = next(grads(n, 1, seed=5))
    for w, c in enumerate(codecs):
        server.wires[w][...] = c.encoder(n).encode(g)
        server.push_arrived(w)
    np.testing.assert_array_equal(server.rows[0], g)
    np.testing.assert_array_equal(server.rows[1], REFERENCES[name](g)[1])


def test_codec_base_class_is_the_identity():
    assert Codec().wire_nbytes(3) == 12 and not Codec.lossy


def test_unknown_codec_in_a_job_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    bad = tmp_path / "bad.toml"
    bad.write_text((root / "jobs/default.toml").read_text() + '\n[exchange]\ncodec = "fp8"\n')
    p = subprocess.run([sys.executable, "-m", "hpcps.train", "--job", str(bad)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "exchange.codec" in p.stderr and "none, fp16, bf16, int8, sign" in p.stderr


def test_plan_carries_each_workers_encoded_bytes():
    from hpcps.config.job import parse_job
    from hpcps.config.schedule import Schedule, WorkerSpec
    from hpcps.ps.plan import plan_for_job as build_plan
    job = parse_job({"name": "t", "workload": "digits", "optimizer": {"name": "sgd", "lr": 0.1},
                     "training": {"global_batch": 3, "iterations": 1}, "exchange": {"codec": "int8"}}, "j.toml")
    schedule = Schedule((0,), (WorkerSpec(0, 1), WorkerSpec(1, 1, codec="sign"), WorkerSpec(2, 1, codec="none")))
    plan = build_plan(job, schedule, 5000)
    assert plan.push_nbytes[0] == tuple(make_codec("int8").wire_nbytes(p.size) for p in plan.pieces)
    assert plan.push_nbytes[1] == tuple(make_codec("sign").wire_nbytes(p.size) for p in plan.pieces)
    assert plan.push_nbytes[2] == tuple(4 * p.size for p in plan.pieces)
    # rank 0 serves itself: its pushes are copies, not bytes on the network
    assert plan.push_bytes() == sum(plan.push_nbytes[1]) + sum(plan.push_nbytes[2])
    assert plan.push_bytes(raw=True) == 2 * 4 * 5000


def test_sizes_and_plans_need_no_pytorch():
    """The simulator and tuner read encoded sizes from plan_for_job without importing PyTorch."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from hpcps.config.job import parse_job\n"
            "from hpcps.config.schedule import default_schedule\n"
            "from hpcps.ps.plan import plan_for_job\n"
            "job = parse_job({'name': 't', 'workload': 'digits', 'optimizer': {'name': 'sgd', 'lr': 0.1},\n"
            "                 'training': {'global_batch': 8, 'iterations': 1}, 'exchange': {'codec': 'fp16'}}, 'j')\n"
            "plan = plan_for_job(job, default_schedule(4, 8), 10000)\n"
            "assert plan.push_bytes() * 2 == plan.push_bytes(raw=True)\n"
            "assert 'torch' not in sys.modules\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


# -- pull codecs ----------------------------------------------------------------------------------------
def test_the_config_knows_every_pull_codec():
    from hpcps.config.schedule import PULL_CODECS as CONFIG_PULL_CODECS
    from hpcps.ps.codec import PULL_CODECS
    assert PULL_CODECS == CONFIG_PULL_CODECS == ("none", "fp16", "bf16")


@pytest.mark.parametrize("name", ["none", "fp16", "bf16"])
@pytest.mark.parametrize("n", SIZES)
def test_a_pull_is_the_reference_without_error_feedback(name, n):
    """pack() encodes the values as they are (no residual), into the first wire_nbytes(n) bytes of a
    longer buffer (the stale exchange's version follows them), and unpack() gives the reference's values;
    packing twice gives the same bytes (nothing carried over)."""
    from hpcps.ps.codec import make_pull_codec
    codec = make_pull_codec(name)
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
    x[0] = 1e6                         # past fp16's range: saturated, not inf
    wire = np.full(codec.wire_nbytes(n) + 4, 0xAB, np.uint8)
    for _ in range(2):
        codec.pack(x, wire, np.empty(n, np.float32) if codec.lossy else None)
        want_wire, want = REFERENCES[name](x) if name != "none" else (x.tobytes(), x)
        assert wire[:codec.wire_nbytes(n)].tobytes() == want_wire
        assert (wire[codec.wire_nbytes(n):] == 0xAB).all()
        out = np.empty(n, np.float32)
        codec.unpack(wire, out)
        np.testing.assert_array_equal(out, want)
        assert np.isfinite(out).all()


def test_pulls_take_only_16_bit_floats():
    from hpcps.ps.codec import make_pull_codec
    for name in ("int8", "sign", "topk", "fp8"):
        with pytest.raises(ValueError, match="pull codec.*none, fp16, bf16"):
            make_pull_codec(name)


def test_bad_pull_codec_in_a_job_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    bad = tmp_path / "bad.toml"
    bad.write_text((root / "jobs/default.toml").read_text() + '\n[exchange]\npull_codec = "int8"\n')
    p = subprocess.run([sys.executable, "-m", "hpcps.train", "--job", str(bad)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "exchange.pull_codec" in p.stderr and "none, fp16, bf16" in p.stderr
    assert list(tmp_path.iterdir()) == [bad]


@pytest.mark.parametrize("pull_codec, per_value", [("none", 4), ("fp16", 2), ("bf16", 2)])
def test_plan_carries_the_encoded_pull_bytes(pull_codec, per_value):
    from hpcps.config.job import parse_job
    from hpcps.config.schedule import Schedule, WorkerSpec
    from hpcps.ps.plan import plan_for_job
    job = parse_job({"name": "t", "workload": "digits", "optimizer": {"name": "sgd", "lr": 0.1},
                     "training": {"global_batch": 3, "iterations": 1},
                     "exchange": {"codec": "int8", "pull_codec": pull_codec, "bucket_mb": 4096 / 2 ** 20}}, "j.toml")
    schedule = Schedule((0, 3), (WorkerSpec(0, 1), WorkerSpec(1, 1), WorkerSpec(2, 1)))
    plan = plan_for_job(job, schedule, 5000)
    assert len(plan.pieces) > 2
    assert plan.pull_nbytes == tuple(per_value * p.size for p in plan.pieces)
    for m in plan.pulls():
        assert m.nbytes == per_value * m.elements
    # rank 0's own pieces go to its worker by a copy: 3 workers get rank 3's, 2 get rank 0's
    own = sum(p.size for p in plan.pieces if p.server == 0)
    assert plan.pull_bytes(raw=True) == 4 * (3 * 5000 - own)
    assert plan.pull_bytes() == per_value * (3 * 5000 - own)
    assert plan.push_nbytes[1] == tuple(make_codec("int8").wire_nbytes(p.size) for p in plan.pieces)
