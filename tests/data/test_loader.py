"""The data module (``data/loader.py``): train batches, views and pairs, rank shards, the epoch plan as a function of
the seed, the requirements it refuses, evaluation batches."""

import pytest
import torch

from selfdistill.batch import MultiCrop
from selfdistill.config import DataConfig
from selfdistill.data import DataModule, DataRequirements, normalize

SMALL = DataConfig(name="synthetic", synthetic_size=64, batch_size=16, num_classes=4)


def test_batches_views_pairs_and_indices():
    cfg = DataConfig(name="synthetic", synthetic_size=64, batch_size=16, num_classes=4)
    dm = DataModule(cfg)
    loader = dm.train_loader(DataRequirements(sampler="pair", views=("weak", "weak")), seed=0)
    batches = list(loader.iterate(1))
    assert len(batches) == 4
    b = batches[0]
    assert b.x.shape == (16, 3, 16, 16) and b.x.dtype == torch.float32
    assert len(b.views) == 2 and b.views[0] is b.x and not torch.equal(b.views[0], b.views[1])
    assert torch.equal(b.partner.y, b.y)
    assert torch.equal(dm.train.labels[b.index], b.y)
    # resuming mid-epoch gives the very same batches
    tail = list(loader.iterate(1, start_step=2))
    assert torch.equal(tail[0].x, batches[2].x) and torch.equal(tail[1].partner.x, batches[3].partner.x)


def test_rank_shards_reassemble_the_global_batch():
    cfg = DataConfig(name="synthetic", synthetic_size=64, batch_size=16, num_classes=4)
    whole = next(DataModule(cfg).train_loader(DataRequirements(), seed=5).iterate(1))
    parts = [next(DataModule(cfg, rank=r, world=2).train_loader(DataRequirements(), seed=5).iterate(1))
             for r in range(2)]
    assert torch.equal(torch.cat([p.x for p in parts]), whole.x)
    assert torch.equal(torch.cat([p.index for p in parts]), whole.index)
    with pytest.raises(ValueError, match="multiple of the world size"):
        DataModule(DataConfig(name="synthetic", batch_size=15), world=2).train_loader(DataRequirements(), 0)


@pytest.mark.parametrize("req", [DataRequirements(), DataRequirements(sampler="pair", views=("weak", "strong")),
                                 DataRequirements(multicrop=MultiCrop(2, 2, 16, 8))],
                         ids=["weak", "pair-strong", "multicrop"])
def test_the_epoch_plan_and_its_views_are_a_function_of_the_seed_and_the_epoch(req):
    def epoch(seed: int, e: int) -> list:
        return list(DataModule(SMALL).train_loader(req, seed=seed).iterate(e))

    a, b = epoch(3, 1), epoch(3, 1)
    for x, y in zip(a, b, strict=True):  # a fresh data module with the same seed serves the very same batches
        assert torch.equal(x.index, y.index) and all(torch.equal(u, v) for u, v in zip(x.views, y.views, strict=True))
        if req.sampler == "pair":
            assert torch.equal(x.partner.index, y.partner.index)
    assert not torch.equal(a[0].index, epoch(4, 1)[0].index)  # another seed shuffles otherwise
    assert not torch.equal(a[0].index, epoch(3, 2)[0].index)  # and so does another epoch
    assert sorted(torch.cat([x.index for x in a]).tolist()) == list(range(64))  # every image once per epoch


def test_steps_per_epoch_follow_the_batch_scale_and_drop_last():
    dm = DataModule(SMALL)
    assert len(dm.train_loader(DataRequirements(), seed=0)) == 4
    half = dm.train_loader(DataRequirements(batch_scale=0.5), seed=0)
    assert len(half) == 8 and len(next(half.iterate(1))) == 8
    ragged = DataModule(DataConfig(name="synthetic", synthetic_size=64, batch_size=24, num_classes=4, drop_last=False))
    assert [len(b) for b in ragged.train_loader(DataRequirements(), seed=0).iterate(1)] == [24, 24, 16]


def test_unknown_samplers_and_view_pipelines_are_refused():
    dm = DataModule(SMALL)
    with pytest.raises(ValueError, match="unknown sampler 'bogus'"):
        dm.train_loader(DataRequirements(sampler="bogus"), seed=0)
    with pytest.raises(ValueError, match=r"unknown view pipelines \['blurred'\]"):
        dm.train_loader(DataRequirements(views=("weak", "blurred")), seed=0)
    with pytest.raises(ValueError, match="unknown view pipelines"):
        dm.train_loader(DataRequirements(views=()), seed=0)


def test_eval_batches_are_the_normalised_split_in_order():
    dm = DataModule(DataConfig(name="synthetic", synthetic_size=64, batch_size=16, num_classes=4,
                               eval_batch_size=24))
    batches = list(dm.eval_batches(dm.test))
    sizes = [len(y) for _, y in batches]
    assert len(sizes) > 1 and set(sizes[:-1]) == {24} and 0 < sizes[-1] <= 24
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), normalize(dm.test.images, dm.mean, dm.std))
    assert torch.equal(torch.cat([y for _, y in batches]), dm.test.labels)
