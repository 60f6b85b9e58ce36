"""The message plan: pieces cover the vector, orders follow the forward and backward passes, and the
bytes of every message are the codec's."""

import pytest

from hpcps.ps.plan import ALIGN_ELEMENTS, MessagePlan, cut_pieces, ready_fractions
from hpcps.ps.sharding import plan_shards


@pytest.mark.parametrize("n,servers,bucket", [(1000, [0, 1], 64), (12345, [2, 0, 1], 1000), (10, [0, 1, 2], 16),
                                              (100_000, [0], 100_000)])
def test_pieces_cover_each_shard_without_gap_or_overlap(n, servers, bucket):
    shards = plan_shards(n, servers)
    pieces = cut_pieces(shards, bucket)
    assert [p.index for p in pieces] == list(range(len(pieces)))
    assert pieces[0].start == 0 and pieces[-1].stop == n
    for a, b in zip(pieces, pieces[1:]):
        assert a.stop == b.start
    for p in pieces:
        s = shards[p.shard]
        assert s.start <= p.start < p.stop <= s.stop and p.server == s.server
        assert p.size <= max(bucket, ALIGN_ELEMENTS) and p.start % ALIGN_ELEMENTS == 0
    for s in shards:
        mine = [p for p in pieces if p.shard == s.index]
        assert sum(p.size for p in mine) == s.size
        if mine:    # as equal as the alignment allows
            assert max(p.size for p in mine) - min(p.size for p in mine) <= 2 * ALIGN_ELEMENTS


def test_messages_of_one_iteration():
    plan = MessagePlan.build(4096, servers=[0, 1], workers=[0, 1, 2], bucket_bytes=4 * 1024)
    assert len(plan.pieces) == 4                       # two shards of 2048 elements, 1024 per piece
    pulls, pushes = plan.pulls(), plan.pushes()
    assert len(pulls) == len(pushes) == 4 * 3
    # pulls in forward order (the first piece first), pushes in backward order (the last piece first)
    assert [m.piece for m in pulls][::3] == [0, 1, 2, 3]
    assert [m.piece for m in pushes][::3] == [3, 2, 1, 0]
    assert all(m.src == plan.pieces[m.piece].server for m in pulls)
    assert all(m.dst == plan.pieces[m.piece].server for m in pushes)
    # a rank serving itself copies: those messages are local and cross no network
    local = [m for m in plan.messages() if m.local]
    assert len(local) == 2 * 4 and plan.network_bytes() == 4 * (len(plan.messages()) - len(local)) * 1024
    assert plan.network_bytes(node_of=[0, 0, 1]) == 4 * 1024 * (2 * 4)   # ranks 0 and 1 share a node


def test_push_bytes_are_the_codecs():
    plan = MessagePlan.build(2048, servers=[0], workers=[1, 2], bucket_bytes=8192,
                             push_nbytes=lambda row, n: n if row == 0 else 4 * n)   # worker 1 sends a byte each
    by_worker = {m.src: m.nbytes for m in plan.pushes()}
    assert by_worker == {1: 2048, 2: 8192}
    assert all(m.nbytes == 4 * m.elements for m in plan.pulls())


def test_pieces_are_ready_from_the_end_of_the_vector():
    plan = MessagePlan.build(4096, servers=[0], workers=[0], bucket_bytes=4 * 1024)
    f = ready_fractions(plan, forward_fraction=1 / 3)
    assert f == sorted(f, reverse=True) and f[0] == pytest.approx(1.0) and f[-1] > 1 / 3


@pytest.mark.parametrize("n,servers,bucket_bytes", [(1000, [0, 1, 2], 1000), (123_457, [3, 1], 10_000),
                                                    (99_999, [0, 1, 2, 4, 5, 6, 7], 4 * 1024 * 1024)])
def test_every_shard_and_piece_starts_on_a_64_byte_boundary(n, servers, bucket_bytes):
    """The exchange receives each piece into a slice of the float32 flat buffer: every shard and piece
    starts on a cache line (16 float32 elements, 64 bytes), and every piece but a shard's last is a
    whole number of cache lines, whatever the model size, servers or bucket size."""
    plan = MessagePlan.build(n, servers=servers, workers=[9], bucket_bytes=bucket_bytes)
    for s in plan.shards:
        assert s.start % 16 == 0 and (4 * s.start) % 64 == 0, s
    last = {p.shard: p.index for p in plan.pieces}
    for p in plan.pieces:
        assert p.start % 16 == 0 and (4 * p.start) % 64 == 0, p
        assert p.size <= max(bucket_bytes // 4, 16)
        if p.index != last[p.shard]:
            assert p.size % 16 == 0, p
    assert sum(p.size for p in plan.pieces) == n
