"""Detection data: canvases keep the aspect and scale the boxes, flips move images and boxes together, the COCO format,
dataset errors on the real Penn-Fudan images."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from selfdistill.config import DataConfig
from selfdistill.data.sources import DataError
from selfdistill.tasks.detection import (
    DetDataModule,
    hflip_boxes,
    hflip_valid,
    load_canvases,
)
from selfdistill.tasks.detection.config import DetectionConfig


def _pf_config(root: Path, **kw) -> DataConfig:
    return DataConfig(name="pennfudan", root=str(root), batch_size=2, eval_batch_size=4, **kw)


SMALL = DetectionConfig(size=96)


@pytest.fixture(scope="module")
def pennfudan_small(pennfudan_root):
    return DetDataModule(_pf_config(pennfudan_root, train_subset=12, val_fraction=0.25), SMALL)


def test_canvases_keep_the_aspect_and_scale_the_boxes(pennfudan_small, pennfudan_root):
    d = pennfudan_small
    assert len(d.train) == 9 and len(d.val) == 3 and len(d.test) == 50 and d.classes == ["person"]
    for split in (d.train, d.test):
        assert (split.sizes.max(1).values == 96).all()  # the longer side fills the canvas
        for i in range(len(split)):
            h, w = split.sizes[i].tolist()
            assert not split.images[i, :, h:, :].any() and not split.images[i, :, :, w:].any()  # padding is zero
            b = split.boxes[i]
            assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all() and (b[:, :2] >= 0).all()
            assert (split.labels[i] == 1).all()
    # the first training image's first box is the annotation scaled by 96 / its longer side
    path = pennfudan_root / "PNGImages" / "FudanPed00001.png"
    with Image.open(path) as im:
        scale = 96 / max(im.size)
    one = load_canvases([(path, torch.tensor([[159.0, 181.0, 302.0, 431.0], [0, 0, 0.5, 0.5]]),
                          torch.tensor([1, 1]))], 96, min_box=1.0)
    assert torch.allclose(one.boxes[0], torch.tensor([[159.0, 181.0, 302.0, 431.0]]) * scale)  # tiny box dropped
    # normalised padding stays exactly zero
    x = d.prepare(d.train.images[:2], d.train.sizes[:2])
    h, w = d.train.sizes[0].tolist()
    assert not x[0, :, h:, :].any() and not x[0, :, :, w:].any()


@pytest.mark.parametrize("seed", range(4))
def test_flip_mirrors_images_and_boxes_together(seed):
    g = torch.Generator().manual_seed(seed)
    n, side = 3, 20
    sizes = torch.randint(5, side + 1, (n, 2), generator=g)
    images = torch.zeros(n, 2, side, side)
    for i, (h, w) in enumerate(sizes.tolist()):
        images[i, :, :h, :w] = torch.rand(2, h, w, generator=g) + 1
    flip = torch.tensor([True, False, True])
    out = hflip_valid(images, sizes, flip)
    assert torch.equal(hflip_valid(out, sizes, flip), images)  # an involution
    assert torch.equal(out[1], images[1])
    for i in (0, 2):
        h, w = sizes[i].tolist()
        assert torch.equal(out[i, :, :h, :w], images[i, :, :h, :w].flip(-1))  # mirrored inside the valid width
        assert not out[i, :, :, w:].any()  # padding stays on the right
        box = torch.tensor([[1.0, 0.0, 3.0, float(h)]])
        fb = hflip_boxes(box, w)
        x1, x2 = int(fb[0, 0]), int(fb[0, 2])
        assert torch.equal(out[i, :, :h, x1:x2], images[i, :, :h, 1:3].flip(-1))  # the box's pixels moved with it
    assert torch.equal(hflip_boxes(hflip_boxes(box, 7), 7), box)


def _coco_folder(tmp_path, crowd: bool = True):
    (tmp_path / "annotations").mkdir()
    for split, names in (("train", ["a", "b", "c"]), ("val", ["d"])):
        (tmp_path / split).mkdir()
        images, anns = [], []
        for i, n in enumerate(names):
            Image.new("RGB", (40, 20), (i * 40, 0, 0)).save(tmp_path / split / f"{n}.png")
            images.append({"id": 10 + i, "file_name": f"{n}.png", "width": 40, "height": 20})
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "bbox": [2, 2, 10, 8], "category_id": 7,
                         "iscrowd": 0})
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "bbox": [20, 4, 12, 12], "category_id": 3,
                         "iscrowd": int(crowd and i == 0)})
        cats = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return tmp_path


def test_coco_format_maps_categories_in_id_order_and_leaves_crowds_out(tmp_path):
    root = _coco_folder(tmp_path)
    cfg = DataConfig(name="coco", root=str(root), batch_size=2)
    d = DetDataModule(cfg, DetectionConfig(size=40, test_split="val"))
    assert d.classes == ["cat", "dog"] and len(d.train) == 3 and len(d.test) == 1
    assert d.train.labels[0].tolist() == [2]  # the crowd cat of image a is left out
    assert d.train.labels[1].tolist() == [2, 1] and d.train.boxes[1].tolist() == [[2, 2, 12, 10], [20, 4, 32, 16]]
    assert d.presence.tolist() == [[False, True], [True, True], [True, True]]
    with pytest.raises(DataError, match=r"instances_nope\.json"):
        DetDataModule(cfg, DetectionConfig(size=40, test_split="nope"))


def test_dataset_errors_say_what_to_do(tmp_path, pennfudan_root):
    with pytest.raises(DataError, match=r"data\.root is required"):
        DetDataModule(DataConfig(name="pennfudan"))
    with pytest.raises(DataError, match=r"unknown detection dataset 'penfudan'.*pennfudan"):
        DetDataModule(DataConfig(name="penfudan", root=str(tmp_path)))
    with pytest.raises(DataError, match="'train' and 'test'"):
        DetDataModule(_pf_config(pennfudan_root), DetectionConfig(size=96, test_split="val"))
    with pytest.raises(DataError, match="both name a validation split"):
        DetDataModule(_pf_config(pennfudan_root, val_fraction=0.2), DetectionConfig(size=96, val_split="test"))
    with pytest.raises(DataError, match="train_subset=500 exceeds the 120"):
        DetDataModule(_pf_config(pennfudan_root, train_subset=500), SMALL)
