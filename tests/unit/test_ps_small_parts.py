"""Small parts of hpcps.ps checked exactly: names, boundaries and types that whole runs do not pin."""

from __future__ import annotations

import numpy as np
import pytest

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
