import numpy as np
import pytest

from hpcps.data.partition import EpochPartition


def test_workers_never_overlap_within_an_epoch_and_shares_follow_batches():
    batches = [5, 17, 42]
    part = EpochPartition(1000, batches, seed=3)
    assert part.per_epoch == 1000 // 64
    seen = [[] for _ in batches]
    for it in range(part.per_epoch):
        for w in range(3):
            idx = part.indices(it, w)
            assert len(idx) == batches[w]
            seen[w].extend(idx.tolist())
    everything = sum(seen, [])
    assert len(everything) == len(set(everything))            # no sample twice in an epoch
    assert [len(s) for s in seen] == [b * part.per_epoch for b in batches]


def test_union_of_one_step_is_a_global_batch_and_epochs_reshuffle():
    part = EpochPartition(200, [3, 7], seed=0)
    union = np.concatenate([part.indices(0, 0), part.indices(0, 1)])
    assert len(set(union.tolist())) == 10
    first_epoch = part.indices(0, 0).copy()
    second_epoch = part.indices(part.per_epoch, 0)
    assert not np.array_equal(first_epoch, second_epoch)
    # the same order on every rank: a fresh partition with the same seed agrees
    assert np.array_equal(EpochPartition(200, [3, 7], seed=0).indices(0, 1), part.indices(0, 1))


def test_global_batch_larger_than_data_is_an_error():
    with pytest.raises(ValueError, match="exceeds"):
        EpochPartition(10, [8, 8], seed=0)
