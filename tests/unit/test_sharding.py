import numpy as np
import pytest

from hpcps.ps.sharding import ALIGN_ELEMENTS, plan_shards, tensor_pieces


@pytest.mark.parametrize("n, servers", [(0, [0]), (1, [0, 1]), (9610, [0]), (9610, [3, 1, 2]),
                                        (1_000_003, [0, 1, 2, 3, 4]), (40, [0, 1, 2, 3, 4])])
def test_shards_cover_the_vector_once_and_balance_bytes(n, servers):
    shards = plan_shards(n, servers)
    assert [s.server for s in shards] == servers
    assert shards[0].start == 0 and shards[-1].stop == n
    for a, b in zip(shards, shards[1:]):
        assert a.stop == b.start
    sizes = [s.size for s in shards]
    assert sum(sizes) == n and min(sizes) >= 0
    assert max(sizes) - min(sizes) <= ALIGN_ELEMENTS
    assert all(s.start % ALIGN_ELEMENTS == 0 for s in shards)
    # every shard starts on a 64-byte cache line of float32 data, whatever the module's constant says
    assert all((4 * s.start) % 64 == 0 for s in shards)


def test_a_large_tensor_is_split_across_servers():
    sizes = [10, 100_000, 10]   # one big tensor between two small ones
    shards = plan_shards(sum(sizes), [0, 1])
    holders = [{t for t, _, _ in tensor_pieces(sizes, s)} for s in shards]
    assert 1 in holders[0] and 1 in holders[1]
    pieces = [p for s in shards for p in tensor_pieces(sizes, s)]
    covered = np.zeros(sum(sizes), dtype=int)
    offsets = np.cumsum([0] + sizes)
    for t, lo, hi in pieces:
        covered[offsets[t] + lo: offsets[t] + hi] += 1
    assert (covered == 1).all()


def test_no_servers_is_an_error():
    with pytest.raises(ValueError):
        plan_shards(10, [])
