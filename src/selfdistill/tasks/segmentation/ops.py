"""Semantic-segmentation building blocks for dense IPS (docs/tasks.md, segmentation): class-presence pairing, the joint
image + label-map patch swap, the dense distillation losses, and confusion-matrix metrics.

All functions work on batched tensors on any device. Label maps are ``(N, H, W)`` integer tensors in which
``ignore_index`` marks pixels without a label; ignored pixels move with their patch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...engine.distributed import global_mean
from ...engine.metrics import SummedMetrics
from ...losses import kl_rows
from ...patch_swap import Ratio, grid_swap_mask, swap_with_mask


def _list_pairs(root: Path, split: str, layout: Literal["camvid", "voc"]) -> list[tuple[Path, Path]]:
    if layout == "camvid":
        images = sorted(p for p in (root / split).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        return [(p, root / f"{split}annot" / f"{p.stem}.png") for p in images]
    ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    return [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]


def load_segmentation_folder(root: str | Path, split: str, layout: Literal["camvid", "voc"] = "camvid",
                             size: tuple[int, int] | None = None, void: int | None = 11, ignore_index: int = 255
                             ) -> tuple[Tensor, Tensor, list[str]]:
    """Read an image + label-map folder into uint8 tensors ``(N, 3, H, W)`` and ``(N, H, W)``.

    ``camvid``: ``<split>/<name>.jpg`` with ``<split>annot/<name>.png``; ``voc``: ``JPEGImages/``,
    ``SegmentationClass/`` and ``ImageSets/Segmentation/<split>.txt``. Label value ``void`` becomes
    ``ignore_index``. ``size = (H, W)`` resizes images bilinearly and labels by nearest neighbour (a documented
    reduction for CPU runs). Returns ``(images, labels, names)``.
    """
    from PIL import Image

    from ...data.sources import DataError

    root = Path(root)
    if not (root / (split if layout == "camvid" else "JPEGImages")).is_dir():
        raise DataError(f"no {layout} split '{split}' under {root}")
    pairs = _list_pairs(root, split, layout)
    missing = [str(lab) for _, lab in pairs if not lab.is_file()]
    if missing:
        raise DataError(f"{len(missing)} label maps are missing, e.g. {missing[0]}")
    images, labels = [], []
    for img_path, lab_path in pairs:
        with Image.open(img_path) as im, Image.open(lab_path) as lab:
            im, lab = im.convert("RGB"), lab.convert("L") if lab.mode not in ("L", "P") else lab
            if size is not None:
                im = im.resize((size[1], size[0]), Image.BILINEAR)
                lab = lab.resize((size[1], size[0]), Image.NEAREST)
            images.append(torch.from_numpy(np.array(im)).permute(2, 0, 1))
            labels.append(torch.from_numpy(np.array(lab)))
    if len({tuple(t.shape) for t in images}) > 1:
        raise DataError(f"images of {root}/{split} differ in size; pass size=(H, W)")
    y = torch.stack(labels)
    if void is not None:
        y = torch.where(y == void, torch.tensor(ignore_index, dtype=y.dtype), y)
    return torch.stack(images), y, [p.stem for p, _ in pairs]


def class_presence(labels: Tensor, num_classes: int, min_pixels: int = 64, ignore_index: int = 255,
                   exclude_background: bool = True, background: int = 0) -> Tensor:
    """Bool ``(N, K)``: class c is present in image n when it covers at least ``min_pixels`` pixels."""
    flat = labels.flatten(1).long()
    valid = (flat != ignore_index) & (flat >= 0) & (flat < num_classes)
    counts = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    counts.scatter_add_(1, flat.where(valid, 0), valid.float())
    present = counts >= min_pixels
    if exclude_background:
        present[:, background] = False
    return present


def draw_partners(anchors: Tensor, presence: Tensor, generator: torch.Generator) -> Tensor:
    """For each anchor index, a partner that contains a class ``c*`` drawn uniformly from the anchor's present
    classes (the partner uniformly among the images containing ``c*``); an anchor without a present class gets
    a uniformly random partner."""
    pres = presence.cpu()
    n = pres.shape[0]
    a = pres[anchors.cpu()].float()
    has = a.sum(1) > 0
    c_star = torch.multinomial(a + (~has)[:, None].float(), 1, generator=generator)[:, 0]
    holders = pres[:, c_star].T.float()  # (A, N): images containing each anchor's c*
    partner = torch.multinomial(holders + (holders.sum(1, keepdim=True) == 0).float(), 1, generator=generator)[:, 0]
    random = torch.randint(0, n, (len(anchors),), generator=generator)
    return torch.where(has, partner, random).to(anchors.device)


def swap_pair(xa: Tensor, xb: Tensor, ya: Tensor, yb: Tensor, grid: int, ratio: Ratio,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Swap the same random grid cells between paired images *and* their label maps.

    Returns ``(xa~, xb~, ya~, yb~, mask)`` with ``mask`` bool ``(N, 1, H, W)``, true where a pixel came from the
    partner. Pixel values and labels are conserved over each pair.
    """
    n, _, h, w = xa.shape
    mask = grid_swap_mask(n, h, w, grid, ratio, 1.0, generator).to(xa.device)
    xa_s, xb_s = swap_with_mask(xa, xb, mask)
    ya_s, yb_s = swap_with_mask(ya, yb, mask[:, 0])
    return xa_s, xb_s, ya_s, yb_s, mask


def _upsample(z: Tensor, size: tuple[int, int]) -> Tensor:
    return z if z.shape[-2:] == size else F.interpolate(z, size=size, mode="bilinear", align_corners=False)


def pixel_agree_loss(za: Tensor, zb: Tensor, ya: Tensor, yb: Tensor, T: float = 4.0, ignore_index: int = 255,
                     share: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """``pixel_agree``: over ``Ω = {u : ỹ_a(u) = ỹ_b(u) ≠ ignore}``, the more confident side (higher probability of
    the label) teaches the other per pixel: ``T²·mean_Ω KL(σ_T(sg z_t) ‖ σ_T(z_s))``; 0 when Ω is empty.

    Logits ``(N, K, h, w)`` are upsampled to the label size. ``share``: this rank's and the global batch's rows,
    for a mean over the global batch's Ω under DDP (:func:`~selfdistill.engine.distributed.global_mean`).
    Returns ``(loss, |Ω|)`` (this rank's Ω).
    """
    size = ya.shape[-2:]
    za, zb = _upsample(za.float(), size), _upsample(zb.float(), size)
    omega = (ya == yb) & (ya != ignore_index)
    k = za.shape[1]
    pa, pb = za.permute(0, 2, 3, 1)[omega], zb.permute(0, 2, 3, 1)[omega]  # (|Ω|, K)
    y = ya[omega].long().clamp(0, k - 1)
    conf_a = pa.softmax(1).gather(1, y[:, None])[:, 0]
    conf_b = pb.softmax(1).gather(1, y[:, None])[:, 0]
    a_teaches = (conf_a >= conf_b)[:, None]
    teacher = torch.where(a_teaches, pa, pb).detach()
    student = torch.where(a_teaches, pb, pa)
    kl = kl_rows(F.softmax(teacher / T, 1), F.log_softmax(student / T, 1))
    return T * T * global_mean(kl.sum(), omega.sum(), share), omega.sum()


def pixel_kd_loss(z_teacher: Tensor, z_student: Tensor, y: Tensor, T: float = 4.0, ignore_index: int = 255,
                  share: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """``T²·mean KL(σ_T(sg z_t(u)) ‖ σ_T(z_s(u)))`` over the labelled pixels ``u`` of ``y`` (the teacher given, e.g.
    the clean image's prediction of the same pixel); 0 without a labelled pixel. Returns ``(loss, |labelled|)``;
    ``share`` as in :func:`pixel_agree_loss`."""
    size = y.shape[-2:]
    zt, zs = _upsample(z_teacher.detach().float(), size), _upsample(z_student.float(), size)
    valid = y != ignore_index
    pt, ps = zt.permute(0, 2, 3, 1)[valid], zs.permute(0, 2, 3, 1)[valid]
    kl = kl_rows(F.softmax(pt / T, 1), F.log_softmax(ps / T, 1))
    return T * T * global_mean(kl.sum(), valid.sum(), share), valid.sum()


def class_region_loss(za: Tensor, zb: Tensor, ya: Tensor, yb: Tensor, T: float = 4.0, min_pixels: int = 64,
                      ignore_index: int = 255, share: tuple[int, int] | None = None) -> Tensor:
    """``class_region``: for every pair and every class present (≥ ``min_pixels``) in both swapped maps, the
    mean tempered distribution over the class's pixels on each side; the side with the higher mean probability
    of c teaches: ``T²·mean_{pairs, c} KL(sg q_t^c ‖ q_s^c)``; 0 when no class qualifies. ``share``: as in
    :func:`pixel_agree_loss` (the mean is over the global batch's qualifying (pair, class) regions)."""
    size = ya.shape[-2:]
    za, zb = _upsample(za.float(), size), _upsample(zb.float(), size)
    k = za.shape[1]

    def region_means(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        onehot = F.one_hot(y.long().where(y != ignore_index, k), k + 1)[..., :k].float()  # (N, H, W, K)
        count = onehot.sum((1, 2))  # (N, K)
        probs = F.softmax(z / T, 1).permute(0, 2, 3, 1)  # (N, H, W, K)
        q = torch.einsum("nhwc,nhwk->nck", onehot, probs) / count.clamp_min(1)[..., None]  # (N, K classes, K)
        return q, count

    qa, ca = region_means(za, ya)
    qb, cb = region_means(zb, yb)
    valid = (ca >= min_pixels) & (cb >= min_pixels)  # (N, K)
    idx = torch.arange(k, device=za.device)
    pa_c, pb_c = qa[:, idx, idx], qb[:, idx, idx]  # mean probability of c on its own region
    a_teaches = pa_c >= pb_c
    teacher = torch.where(a_teaches[..., None], qa, qb).detach()[valid]
    student = torch.where(a_teaches[..., None], qb, qa)[valid]
    kl = kl_rows(teacher, student.clamp_min(1e-12).log())
    return T * T * global_mean(kl.sum(), valid.sum(), share)


class ConfusionMatrix(SummedMetrics):
    """Accumulates a ``K × K`` confusion matrix (rows: true class, columns: prediction), ignoring ``ignore_index``.

    The matrix is the evaluator's ``sums``: summing it over DDP ranks gives the whole split's metrics.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu",
                 class_names: list[str] | None = None) -> None:
        self.k = num_classes
        self.ignore_index = ignore_index
        self.names = class_names or [str(c) for c in range(num_classes)]
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)

    @property
    def sums(self) -> Tensor:
        """The matrix (reduced over ranks in place by the engine)."""
        return self.matrix

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add a batch: logits ``(N, K, h, w)`` (upsampled to the labels) and labels ``(N, H, W)``."""
        pred = _upsample(logits.float(), labels.shape[-2:]).argmax(1)
        valid = (labels != self.ignore_index) & (labels >= 0) & (labels < self.k)
        idx = labels[valid].long() * self.k + pred[valid]
        self.matrix += torch.bincount(idx, minlength=self.k * self.k).reshape(self.k, self.k).to(self.matrix)

    def iou(self) -> Tensor:
        """Per-class IoU as a fraction (NaN for classes absent from both labels and predictions)."""
        m = self.matrix.cpu()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def compute(self) -> dict[str, float]:
        """``miou`` (mean over classes with a defined IoU) and ``pixel_acc`` in %, ``iou_<class>`` per class in %
        (NaN for classes absent from labels and predictions), ``n`` labelled pixels."""
        m = self.matrix.cpu()
        iou = self.iou()
        present = ~torch.isnan(iou)
        return {"n": float(m.sum()),
                "miou": 100 * float(iou[present].mean()) if bool(present.any()) else float("nan"),
                "pixel_acc": 100 * float(m.diag().sum() / m.sum().clamp_min(1)),
                **{f"iou_{name}": 100 * float(v) for name, v in zip(self.names, iou, strict=True)}}

    def reliability(self) -> None:
        """Segmentation keeps no reliability diagram."""
        return None
