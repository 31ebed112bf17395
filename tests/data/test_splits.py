"""Train/validation splits: class-balanced, disjoint and seeded; random splits for tasks without classes; errors."""

import pytest
import torch

from selfdistill.data.errors import DataError
from selfdistill.data.splits import make_splits, random_splits


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
