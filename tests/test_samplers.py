"""Batch samplers: P x K class structure, determinism per (seed, epoch), disjoint equal DDP shards."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader

from sketchembed.data.samplers import PKBatchSampler, RandomBatchSampler, ShardSampler


def _labels(counts):
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


def test_pk_batches_have_p_classes_times_k():
    labels = _labels([40, 25, 30, 12, 50])
    indices = np.arange(1000, 1000 + len(labels))  # arbitrary ids: the sampler must return these
    s = PKBatchSampler(indices, labels, p=3, k=4, batches_per_epoch=50, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 50
    lab_of = dict(zip(indices.tolist(), labels.tolist()))
    for b in batches:
        assert len(b) == 12
        groups = [[lab_of[i] for i in b[j * 4:(j + 1) * 4]] for j in range(3)]
        assert all(len(set(g)) == 1 for g in groups)  # each bucket is class-pure
        assert len({g[0] for g in groups}) == 3  # P distinct classes
        for g_ids in (b[j * 4:(j + 1) * 4] for j in range(3)):
            assert len(set(g_ids)) == 4  # no repeats inside a bucket when the class has >= K drawings


def test_pk_is_class_balanced_and_covers_a_class_before_repeating():
    labels = _labels([200, 20, 60])
    s = PKBatchSampler(np.arange(len(labels)), labels, p=1, k=5, batches_per_epoch=300, seed=0)
    seen = Counter(labels[b[0]] for b in s)
    assert all(80 <= seen[c] <= 120 for c in range(3)), seen  # uniform over classes, not over drawings
    # class 1 has 20 drawings = 4 buckets: its first 4 buckets are a permutation of all 20
    first = [b for b in s if labels[b[0]] == 1][:4]
    assert sorted(i for b in first for i in b) == list(np.flatnonzero(labels == 1))


def test_pk_small_class_sampled_with_replacement():
    labels = _labels([2, 30])
    s = PKBatchSampler(np.arange(32), labels, p=2, k=6, batches_per_epoch=5, seed=3)
    for b in s:
        small = [i for i in b if labels[i] == 0]
        assert len(small) == 6 and set(small) <= {0, 1}


def test_pk_deterministic_per_seed_and_epoch():
    labels = _labels([30, 30, 30, 30])
    def mk(seed):
        return PKBatchSampler(np.arange(120), labels, p=2, k=3, batches_per_epoch=20, seed=seed)
    a, b = mk(7), mk(7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(mk(8)) != first


def test_pk_default_length_and_validation():
    labels = _labels([30, 30, 30])
    assert len(PKBatchSampler(np.arange(90), labels, p=3, k=5)) == 6
    with pytest.raises(ValueError, match="only 3 classes"):
        PKBatchSampler(np.arange(90), labels, p=4, k=5)
    with pytest.raises(ValueError, match="shape"):
        PKBatchSampler(np.arange(89), labels, p=2, k=5)


@pytest.mark.parametrize("bpe", [21, 20])
def test_pk_ddp_shards_disjoint_equal_and_cover_global(bpe):
    labels = _labels([50, 50, 50, 50])
    idx = np.arange(200)
    single = PKBatchSampler(idx, labels, p=2, k=4, batches_per_epoch=bpe, seed=5, num_replicas=1, rank=0)
    ranks = [PKBatchSampler(idx, labels, p=2, k=4, batches_per_epoch=bpe, seed=5, num_replicas=2, rank=r)
             for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    single.set_epoch(2)
    shards = [list(r) for r in ranks]
    expected = -(-bpe // 2)
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == len(ranks[1]) == expected
    # rank r holds global batches r, r+2, ... of one global sequence that depends on (seed, epoch) only
    global_ = ranks[0]._global_batches()
    assert shards[0] == global_[0::2].tolist() and shards[1] == global_[1::2].tolist()
    if bpe % 2 == 0:  # same global sequence as a single process would draw
        assert global_.tolist() == list(single)
    assert not {tuple(b) for b in shards[0]} & {tuple(b) for b in shards[1]}


def test_random_sampler_ddp_shards_disjoint_equal_and_complete():
    idx = np.arange(500, 603)  # 103 items
    shards = [list(RandomBatchSampler(idx, 10, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5  # 103 // 20
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat)) == 100 and set(flat) <= set(idx.tolist())
    assert all(len(b) == 10 for s in shards for b in s)

    keep = [list(RandomBatchSampler(idx, 10, drop_last=False, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    assert len(keep[0]) == len(keep[1]) == 6  # ceil(ceil(103 / 2) / 10)
    flat = [i for s in keep for b in s for i in b]
    assert set(flat) == set(idx.tolist()) and len(flat) == 104  # one wrapped repeat to even the ranks


def test_random_sampler_epoch_and_seed():
    s = RandomBatchSampler(np.arange(50), 7, seed=0)
    e0 = list(s)
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0
    assert list(RandomBatchSampler(np.arange(50), 7, shuffle=False, drop_last=False))[0] == list(range(7))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        RandomBatchSampler(np.arange(5), 4, num_replicas=2, rank=0)


def test_shard_sampler_partitions_without_padding():
    shards = [list(ShardSampler(11, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]
    with pytest.raises(ValueError):
        ShardSampler(5, num_replicas=2, rank=2)


def test_batch_sampler_exposes_itself_for_lightning_set_epoch():
    """Lightning calls set_epoch on ``loader.batch_sampler.sampler`` only."""
    s = PKBatchSampler(np.arange(40), _labels([20, 20]), p=2, k=2, seed=0)
    loader = DataLoader(list(range(40)), batch_sampler=s)
    _set_sampler_epoch(loader, 4)
    assert s.epoch == 4
