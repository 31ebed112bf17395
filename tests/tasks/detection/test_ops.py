"""Detection ops: the Penn-Fudan reader and split, the box-aware swap policies' invariants."""

import pytest
import torch

from selfdistill.tasks.detection import box_swap, pennfudan_split, read_pascal_v1_boxes


def test_pascal_v1_boxes_and_the_pennfudan_split(pennfudan_root):
    text = 'Bounding box for object 1 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (160, 182) - (302, 431)'
    assert read_pascal_v1_boxes(text).tolist() == [[159.0, 181.0, 302.0, 431.0]]
    train, test = pennfudan_split(pennfudan_root, "train"), pennfudan_split(pennfudan_root, "test")
    assert len(train) == 120 and len(test) == 50
    assert sum(len(b) for _, b in train + test) == 423
    assert test[0][0].name > train[-1][0].name  # the last 50 by name


def _random_boxes(g, n, h, w):
    x1 = torch.randint(0, w - 20, (n,), generator=g).float()
    y1 = torch.randint(0, h - 20, (n,), generator=g).float()
    return torch.stack([x1, y1, x1 + 5 + torch.randint(0, 15, (n,), generator=g), y1 + 5 +
                        torch.randint(0, 15, (n,), generator=g)], 1)


@pytest.mark.parametrize("seed", range(6))
def test_object_preserving_never_cuts_a_box_and_conserves_boxes(seed):
    g = torch.Generator().manual_seed(seed)
    ba, bb = _random_boxes(g, 3, 64, 80), _random_boxes(g, 2, 72, 64)
    la, lb = torch.ones(3, dtype=torch.long), torch.full((2,), 2)
    out = box_swap(ba, bb, la, lb, (64, 80), (72, 64), grid=8, k=20, generator=g)
    assert len(out.boxes_a) + len(out.boxes_b) == 5  # box count conserved across the pair
    for boxes in (out.boxes_a, out.boxes_b):
        for x1, y1, x2, y2 in boxes.long().tolist():
            region = out.mask[y1:y2, x1:x2]
            assert bool(region.all()) or not bool(region.any())  # fully swapped or fully kept
    # swapped cells lie inside both images
    assert not out.mask[64:].any() and not out.mask[:, 64:].any()
    # a received box comes from the partner and keeps its label
    assert sorted(out.labels_a.tolist() + out.labels_b.tolist()) == [1, 1, 1, 2, 2]


def test_background_only_moves_no_object_and_free_clips_cut_boxes():
    g = torch.Generator().manual_seed(0)
    ba = torch.tensor([[0.0, 0.0, 30.0, 30.0]])
    bb = torch.tensor([[40.0, 40.0, 60.0, 60.0]])
    lab = torch.ones(1, dtype=torch.long)
    out = box_swap(ba, bb, lab, lab, (64, 64), (64, 64), grid=4, k=8, policy="background_only", generator=g)
    assert not out.mask[0:30, 0:30].any() and not out.mask[40:60, 40:60].any()
    assert torch.equal(out.boxes_a, ba) and torch.equal(out.boxes_b, bb)
    free = box_swap(ba, bb, lab, lab, (64, 64), (64, 64), grid=4, k=16, policy="free", generator=g)
    assert free.mask.all()  # every cell swapped: the boxes change images whole
    assert torch.equal(free.boxes_a, bb) and torch.equal(free.boxes_b, ba)
