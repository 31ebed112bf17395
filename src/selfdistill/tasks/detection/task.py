"""Object detection as an engine task: COCO mAP, AP50 and AP75 through pycocotools' own evaluator."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...config import RunConfig
from ...data.sources import valid_mask
from ...engine.distributed import DistInfo
from ..base import Normalized, Task, register_task
from .config import DetectionConfig
from .data import DET_DATASETS, DetDataModule
from .methods import DET_METHODS
from .models import DET_MODELS, build_detector, init_backbone


class CocoEvaluator:
    """Collects detections and ground truth of a split and scores them with ``pycocotools.cocoeval.COCOeval``
    (bbox): ``map`` (AP@[.5:.95]), ``ap50``, ``ap75`` and ``ap_<class>`` in %, ``n`` images."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes
        self.dets: list[list[float]] = []  # image_id, x, y, w, h, score, label
        self.gts: list[list[float]] = []  # image_id, x, y, w, h, label
        self.images: list[int] = []

    def update(self, output: list[dict[str, Tensor]], target: list[dict[str, Tensor]]) -> None:
        """Add a batch of per-image detections and targets (each with ``image_id``)."""
        for det, t in zip(output, target, strict=True):
            i = int(t["image_id"])
            self.images.append(i)
            for rows, out, extra in ((det["boxes"], self.dets, (det.get("scores"), det["labels"])),
                                     (t["boxes"], self.gts, (None, t["labels"]))):
                b = rows.detach().float().cpu()
                wh = b[:, 2:] - b[:, :2]
                cols = [torch.full((len(b), 1), float(i)), b[:, :2], wh]
                cols += [v.detach().float().cpu()[:, None] for v in extra if v is not None]
                out.extend(torch.cat(cols, 1).tolist())

    def reduce(self, dist: DistInfo) -> None:
        """Gather every rank's detections and ground truth."""
        if not dist.enabled:
            return
        gathered: list[Any] = [None] * dist.world
        torch.distributed.all_gather_object(gathered, (self.dets, self.gts, self.images))
        self.dets = [r for d, _, _ in gathered for r in d]
        self.gts = [r for _, g, _ in gathered for r in g]
        self.images = [i for _, _, im in gathered for i in im]

    def compute(self) -> dict[str, float]:
        """COCO box AP of the collected detections (0 when there is none)."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        k = len(self.classes)
        names = [f"ap_{c}" for c in self.classes]
        if not self.dets or not self.gts:
            return {"n": float(len(self.images)), "map": 0.0, "ap50": 0.0, "ap75": 0.0, **dict.fromkeys(names, 0.0)}
        gt = COCO()
        gt.dataset = {
            "images": [{"id": i} for i in sorted(set(self.images))],
            "categories": [{"id": c + 1, "name": n} for c, n in enumerate(self.classes)],
            "annotations": [{"id": j + 1, "image_id": int(r[0]), "bbox": r[1:5], "area": r[3] * r[4],
                             "category_id": int(r[5]), "iscrowd": 0} for j, r in enumerate(self.gts)]}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
            gt.createIndex()
            dt = gt.loadRes(np.asarray(self.dets, dtype=np.float64))
            ev = COCOeval(gt, dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        precision = ev.eval["precision"][:, :, :, 0, -1]  # IoU × recall × class, all areas, 100 detections
        per_class = []
        for c in range(k):
            p = precision[:, :, c]
            per_class.append(100 * float(p[p > -1].mean()) if (p > -1).any() else float("nan"))

        def ap(v: float) -> float:  # COCOeval marks an undefined value -1
            return 100 * max(float(v), 0.0)

        return {"n": float(len(self.images)), "map": ap(ev.stats[0]), "ap50": ap(ev.stats[1]),
                "ap75": ap(ev.stats[2]), **dict(zip(names, per_class, strict=True))}

    def reliability(self) -> None:
        """Detection keeps no reliability diagram."""
        return None


class NormalizedDetector(Normalized):
    """A detector taking uint8 canvases as evaluation reads them (each image resized so that its longer side is the
    canvas side, top-left on a zero canvas) and each image's ``(h, w)`` on its canvas, ``sizes`` ``(N, 2)``: the
    padding outside is zero after normalisation, as in evaluation (without ``sizes`` the whole canvas is image).
    Returns torchvision's detections per image, boxes in canvas pixels, labels 1..K."""

    def forward(self, x: Tensor, sizes: Tensor | None = None) -> list[dict[str, Tensor]]:
        x = self.normalize(x)
        if sizes is not None:
            x = x * valid_mask(sizes, x.shape[-2], x.shape[-1], x.device)
        return self.net(x)


@register_task("detection")
class DetectionTask(Task):
    """Object detection."""

    metrics = ("map", "ap50", "ap75")
    train_metric = "pos_acc"
    methods = DET_METHODS
    Options = DetectionConfig

    def data_module(self, cfg: RunConfig, device: torch.device, rank: int, world: int,
                    memory_format: torch.memory_format) -> DetDataModule:
        return DetDataModule(cfg.data, self.options(cfg), device, rank, world, memory_format)

    def build_model(self, cfg: RunConfig, num_classes: int, in_chans: int) -> nn.Module:
        if in_chans != 3:
            raise ValueError("torchvision detectors take 3-channel input")
        model = build_detector(cfg.model.name, num_classes, self.options(cfg).size, **cfg.model.kwargs)
        if cfg.model.init_backbone:
            init_backbone(model, cfg.model.name, cfg.model.init_backbone)
        return model

    def model_names(self) -> list[str]:
        return list(DET_MODELS)

    def dataset_names(self) -> list[str]:
        return list(DET_DATASETS)

    def inference_model(self, net: nn.Module, mean: list[float], std: list[float]) -> NormalizedDetector:
        return NormalizedDetector(net, mean, std)

    def evaluator(self, data: Any, device: torch.device) -> CocoEvaluator:
        return CocoEvaluator(data.classes)

    def train_hits(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | int]:
        """Positives (RoIs or anchors assigned to a box) whose arg-max class is their box's class."""
        return (logits.argmax(1) == targets).sum(), targets.numel()
