"""Samplers: each index once per epoch, drop-last and determinism, same-class partners, rank shards, evaluation
ranges."""

import pytest
import torch

from selfdistill.data.samplers import PairSampler, ShuffleSampler, rank_slice


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


def test_eval_ranges_deal_out_whole_single_process_batches():
    from selfdistill.data.samplers import eval_ranges

    assert eval_ranges(10, 4, 0, 1) == [(0, 4), (4, 8), (8, 10)]
    assert eval_ranges(10, 4, 0, 2) == [(0, 4), (4, 8)] and eval_ranges(10, 4, 1, 2) == [(8, 10)]
    for n, bs, world in [(50, 4, 2), (7, 3, 3), (5, 8, 2), (0, 4, 2), (23, 5, 4)]:
        parts = [eval_ranges(n, bs, r, world) for r in range(world)]
        assert [b for part in parts for b in part] == eval_ranges(n, bs, 0, 1)  # the same batches, in order
