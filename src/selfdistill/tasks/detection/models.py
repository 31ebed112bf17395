"""Detectors: torchvision's Faster R-CNN, RetinaNet and FCOS on light FPN backbones, built without downloaded
weights, wrapped so that a training forward also returns the classification logits of every positive
(RoI or anchor assigned to a ground-truth box) and the box it is assigned to: what matched-proposal
distillation (docs/tasks.md, detection) pools per box.

Names are ``<family>_<backbone>_fpn``: family ``fasterrcnn`` (softmax head over K + 1 classes, background 0),
``retinanet`` or ``fcos`` (sigmoid heads); backbone ``resnet18``, ``resnet34``, ``resnet50`` or (Faster R-CNN)
``mobilenet_v3_large``. Labels are 1..K; class 0 is the background of every family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..transfer import copy_backbone

FAMILIES = ("fasterrcnn", "retinanet", "fcos")
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_large")
DET_MODELS = tuple(f"{f}_{b}_fpn" for f in FAMILIES for b in BACKBONES
                   if not (f != "fasterrcnn" and b.startswith("mobilenet")))


def parse_name(name: str) -> tuple[str, str]:
    """``(family, backbone)`` of a detector name from :data:`DET_MODELS`."""
    base = name.removeprefix("torchvision:")
    if base not in DET_MODELS:
        from ...registry import did_you_mean

        raise ValueError(f"unknown detection model '{name}'.{did_you_mean(base, list(DET_MODELS))} Known: "
                         f"{', '.join(DET_MODELS)}")
    family, rest = base.split("_", 1)
    return family, rest.removesuffix("_fpn")


def _backbone(family: str, backbone: str) -> nn.Module:
    """An FPN backbone with trainable BatchNorm everywhere (nothing is pretrained, so nothing is frozen)."""
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    if backbone.startswith("mobilenet"):
        return mobilenet_backbone(backbone_name=backbone, weights=None, fpn=True, norm_layer=nn.BatchNorm2d,
                                  trainable_layers=6)
    if family == "fasterrcnn":
        return resnet_fpn_backbone(backbone_name=backbone, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5)
    # one-stage detectors skip P2 and add P6/P7, as torchvision's RetinaNet and FCOS do
    return resnet_fpn_backbone(backbone_name=backbone, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5,
                               returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))


class DetectionNet(nn.Module):
    """A torchvision detector taking normalised ``(N, 3, S, S)`` canvases.

    Training forward ``(x, targets)`` returns ``{"losses": the detector's own losses, "logits": (P, C)
    classification logits of the positives, "gt": (P,) index of each positive's box in the batch (boxes numbered
    image after image), "iou": (P,) IoU of each positive's RoI or anchor with that box, "softmax": the head
    type, "cls_terms": the number of terms the detector's classification loss is normalised by (sampled RoIs for
    Faster R-CNN, foreground anchors for the focal-loss detectors)}``; evaluation forward ``(x)`` returns
    torchvision's per-image detections.
    The head type is ``softmax`` for Faster R-CNN (``C = K + 1`` with background) and sigmoid otherwise
    (``C = K + 1`` columns, column 0 never a positive's class).
    """

    def __init__(self, net: nn.Module, family: str) -> None:
        super().__init__()
        self.net = net
        self.family = family
        self.softmax = family == "fasterrcnn"
        self._seen: dict[str, Any] = {}
        if self.softmax:
            heads = net.roi_heads
            select = heads.select_training_samples

            def select_and_keep(proposals, targets):  # the RoIs' assignment to boxes (labels 0 = background)
                out = select(proposals, targets)
                self._seen.update(boxes=out[0], matched=out[1], labels=out[2], targets=targets)
                return out

            heads.select_training_samples = select_and_keep
            heads.box_predictor.register_forward_hook(lambda _m, _i, out: self._seen.__setitem__("logits", out[0]))
        else:
            loss = net.head.compute_loss

            def loss_and_keep(targets, head_outputs, anchors, matched_idxs):  # anchors' assignment (-1 = none)
                self._seen.update(logits=head_outputs["cls_logits"], matched=matched_idxs, boxes=anchors,
                                  targets=targets)
                return loss(targets, head_outputs, anchors, matched_idxs)

            net.head.compute_loss = loss_and_keep

    def forward(self, x: Tensor, targets: list[dict[str, Tensor]] | None = None) -> Any:
        images = list(x.unbind(0))
        if not self.training:
            return self.net(images)
        self._seen.clear()
        losses = self.net(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        seen, offset, logits, gt, iou, terms = self._seen, 0, [], [], [], 0
        first_box = torch.tensor([0, *(len(t["boxes"]) for t in targets)]).cumsum(0).tolist()
        for i in range(len(targets)):
            if self.softmax:
                n_rois = seen["matched"][i].numel()
                pos = seen["labels"][i] > 0
                rows = seen["logits"][offset:offset + n_rois]
                offset += n_rois
                terms += n_rois  # the classification loss averages over every sampled RoI
            else:
                pos = seen["matched"][i] >= 0
                rows = seen["logits"][i]
                terms += int(pos.sum())  # focal losses are normalised by the foreground anchors
            logits.append(rows[pos])
            gt.append(seen["matched"][i][pos] + first_box[i])
            iou.append(paired_iou(seen["boxes"][i][pos], seen["targets"][i]["boxes"][seen["matched"][i][pos]]))
        self._seen.clear()
        return {"losses": losses, "logits": torch.cat(logits), "gt": torch.cat(gt), "iou": torch.cat(iou),
                "softmax": self.softmax, "cls_terms": max(terms, 1)}


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]`` for two ``(P, 4)`` box tensors."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(1)
    area = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area - inter).clamp_min(1e-9)


def build_detector(name: str, num_classes: int, image_size: int, **kwargs: Any) -> DetectionNet:
    """Detector ``name`` (see :data:`DET_MODELS`) with random weights for ``num_classes`` object classes (plus
    background), for canvases of side ``image_size`` (torchvision's own resize is then the identity and its
    normalisation is off: the data module normalises). ``kwargs`` go to the torchvision detector class (e.g.
    ``box_batch_size_per_image``, ``rpn_post_nms_top_n_train``, ``score_thresh``)."""
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    family, backbone = parse_name(name)
    common = {"min_size": image_size, "max_size": image_size, "image_mean": [0.0, 0.0, 0.0],
              "image_std": [1.0, 1.0, 1.0]}
    body = _backbone(family, backbone)
    if family == "fasterrcnn":
        if backbone.startswith("mobilenet"):  # three maps: torchvision's anchors for this backbone
            common["rpn_anchor_generator"] = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
        net = FasterRCNN(body, num_classes + 1, **{**common, **kwargs})
    else:
        net = {"retinanet": RetinaNet, "fcos": FCOS}[family](body, num_classes + 1, **{**common, **kwargs})
    return DetectionNet(net, family)


def init_backbone(model: DetectionNet, name: str, checkpoint: str | Path) -> int:
    """Copy a selfdistill classification run of ``torchvision:<backbone>`` into the detector's backbone body (the
    ``transfer`` mode); the FPN and heads keep their random initialisation. Returns the tensors copied."""
    return copy_backbone(model.net.backbone.body, parse_name(name)[1], checkpoint, name)
