"""The streaming backend: an ImageFolder tree read by DataLoader workers, pairs and evaluation batches in order."""

import torch

from selfdistill.config import DataConfig
from selfdistill.data import DataModule, DataRequirements
from tests.helpers import image_folder


def test_streaming_imagefolder(tmp_path):
    root = image_folder(tmp_path / "ds", size=(12, 12), per_class=4)
    cfg = DataConfig(name="imagefolder", root=str(root), in_memory="never", num_workers=0, image_size=8,
                     batch_size=4, eval_batch_size=3)
    dm = DataModule(cfg)
    assert not dm.in_memory
    batches = list(dm.train_loader(DataRequirements(sampler="pair"), seed=0).iterate(1))
    assert len(batches) == 2 and batches[0].x.shape == (4, 3, 8, 8)
    assert torch.equal(batches[0].partner.y, batches[0].y)
    ys = torch.cat([y for _, y in dm.eval_batches(dm.test)])
    assert torch.equal(ys, dm.test.labels)
