import pytest
import torch

from selfdistill.data.errors import DataError
from selfdistill.data.samplers import PairSampler, ShuffleSampler, rank_slice
from selfdistill.data.splits import make_splits, random_splits


def _labels(n=103, k=5):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("cls", [ShuffleSampler, PairSampler])
def test_each_index_once_per_epoch_as_anchor(cls):
    labels = _labels()
    s = cls(labels, 16, drop_last=False, seed=3)
    for epoch in (1, 2):
        anchors = torch.cat([b.anchor for b in s.epoch(epoch)])
        assert sorted(anchors.tolist()) == list(range(len(labels)))
    assert len(s) == 7
    assert not torch.equal(torch.cat([b.anchor for b in s.epoch(1)]), torch.cat([b.anchor for b in s.epoch(2)]))


def test_drop_last_and_determinism():
    labels = _labels()
    s = ShuffleSampler(labels, 16, drop_last=True, seed=3)
    plan = s.epoch(1)
    assert len(plan) == len(s) == 6 and all(b.anchor.numel() == 16 for b in plan)
    again = ShuffleSampler(labels, 16, drop_last=True, seed=3).epoch(1)
    assert all(torch.equal(a.anchor, b.anchor) for a, b in zip(plan, again, strict=True))


def test_pair_partners_share_the_label_and_cover_the_class():
    labels = _labels(400, 4)
    s = PairSampler(labels, 50, drop_last=False, seed=1)
    partners = []
    for b in s.epoch(1):
        assert torch.equal(labels[b.partner], labels[b.anchor])
        partners.append(b.partner)
    # partners are drawn from the whole class: over an epoch nearly every index of the class appears
    seen = torch.cat(partners).unique().numel()
    assert seen > 0.5 * len(labels)


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint_cover_and_keep_pairs(world):
    labels = _labels(90, 3)
    s = PairSampler(labels, 30, drop_last=False, seed=0)
    for b in s.epoch(1):
        shards = [b.shard(r, world) for r in range(world)]
        assert torch.equal(torch.cat([sh.anchor for sh in shards]), b.anchor)
        assert torch.equal(torch.cat([sh.partner for sh in shards]), b.partner)
        for sh in shards:
            assert torch.equal(labels[sh.anchor], labels[sh.partner])


def test_rank_slice_matches_tensor_split():
    for n in (0, 1, 7, 10):
        for world in (1, 2, 3, 4):
            parts = torch.arange(n).tensor_split(world)
            for r in range(world):
                assert torch.equal(torch.arange(n)[rank_slice(n, r, world)], parts[r])


def test_splits_are_balanced_disjoint_and_seeded():
    labels = torch.arange(1000) % 10
    train, val = make_splits(labels, 10, val_fraction=0.1, train_subset=300, seed=0)
    assert torch.bincount(labels[val], minlength=10).tolist() == [10] * 10
    assert torch.bincount(labels[train], minlength=10).tolist() == [30] * 10
    assert not set(train.tolist()) & set(val.tolist())
    train2, val2 = make_splits(labels, 10, val_fraction=0.1, train_subset=300, seed=0)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    train3, _ = make_splits(labels, 10, val_fraction=0.1, train_subset=300, seed=1)
    assert not torch.equal(train, train3)
    # the validation split does not depend on the training subset size
    _, val_all = make_splits(labels, 10, val_fraction=0.1, train_subset=0, seed=0)
    assert torch.equal(val, val_all)


def test_subset_remainder_is_spread_one_per_class():
    labels = torch.arange(1000) % 10
    train, _ = make_splits(labels, 10, val_fraction=0.0, train_subset=23, seed=0)
    counts = torch.bincount(labels[train], minlength=10)
    assert counts.sum() == 23 and counts.max() - counts.min() == 1


def test_split_errors():
    labels = torch.arange(100) % 10
    with pytest.raises(DataError, match="val_fraction"):
        make_splits(labels, 10, val_fraction=1.0, train_subset=0, seed=0)
    with pytest.raises(DataError, match="train_subset"):
        make_splits(labels, 10, val_fraction=0.5, train_subset=80, seed=0)


@pytest.mark.parametrize(("n", "subset", "fraction"), [(20, 0, 0.0), (20, 0, 0.25), (20, 12, 0.25), (7, 7, 0.5),
                                                       (5, 0, 0.01)])
def test_random_splits_are_disjoint_sorted_seeded_and_sized(n, subset, fraction):
    train, val = random_splits(n, subset, fraction, seed=3)
    kept = subset or n
    n_val = max(1, round(fraction * kept)) if fraction else 0
    assert len(val) == n_val and len(train) == kept - n_val
    assert not set(train) & set(val) and set(train) | set(val) <= set(range(n))
    assert train == sorted(train) and val == sorted(val)
    assert (train, val) == random_splits(n, subset, fraction, seed=3)
    if subset:  # the hold-out comes out of the subset: the same subset whatever the fraction
        whole, none = random_splits(n, subset, 0.0, seed=3)
        assert set(train) | set(val) == set(whole) and none == []


def test_random_splits_depend_on_the_seed_and_reject_impossible_settings():
    assert random_splits(100, 0, 0.3, seed=0) != random_splits(100, 0, 0.3, seed=1)
    with pytest.raises(DataError, match="val_fraction"):
        random_splits(10, 0, 1.0, seed=0)
    with pytest.raises(DataError, match="train_subset=11 exceeds the 10"):
        random_splits(10, 11, 0.0, seed=0)


def test_eval_ranges_deal_out_whole_single_process_batches():
    from selfdistill.data.samplers import eval_ranges

    assert eval_ranges(10, 4, 0, 1) == [(0, 4), (4, 8), (8, 10)]
    assert eval_ranges(10, 4, 0, 2) == [(0, 4), (4, 8)] and eval_ranges(10, 4, 1, 2) == [(8, 10)]
    for n, bs, world in [(50, 4, 2), (7, 3, 3), (5, 8, 2), (0, 4, 2), (23, 5, 4)]:
        parts = [eval_ranges(n, bs, r, world) for r in range(world)]
        assert [b for part in parts for b in part] == eval_ranges(n, bs, 0, 1)  # the same batches, in order
