"""DINO: self-supervised self-distillation with an EMA teacher, centring and sharpening (docs/methods.md, dino).

The student (backbone + projection head) sees global and local crops, the EMA teacher the global crops; the
student predicts the teacher's centred, sharpened distribution of every other crop. Labels are not used. The
features are evaluated by k-NN (k = 20, votes ``exp(sim/0.07)``) at every evaluation and by a linear probe at
the end, for the student and the teacher, beside two controls scored the same way: the network at
initialisation and the standardised pixels. Collapse instruments are logged every epoch, and a teacher that stays
uniform or on a few dimensions for ``collapse_patience`` epochs is warned about (:class:`CollapseMonitor`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch, DataRequirements, MultiCrop
from ..config import limited
from ..engine.distributed import unwrap, update_center
from ..engine.optim import ModelEMA, cosine_to_one
from ..models.features import last_linear
from .base import Method, StepOutput, register_method

PIXEL_SIDE = 32
"""The pixel control reads images area-averaged down to at most this side (32 px: 3,072 values per RGB image)."""

COLLAPSE_MODES = ("uniform", "onehot")
"""The collapse modes :class:`CollapseMonitor` tells apart (the ``collapse_<mode>_epochs`` columns)."""


class TeacherCollapseWarning(UserWarning):
    """DINO's teacher has stayed in one collapse mode for ``collapse_patience`` epochs."""


@dataclass
class CollapseMonitor:
    """Consecutive epochs in each collapse mode, from an epoch's mean teacher instruments.

    With K = ``out_dim``, H̄ the mean per-image entropy of the centred, sharpened teacher and KL its batch mean p̄'s
    divergence from uniform, H(p̄) = log K − KL is the batch mean's entropy and I = H(p̄) − H̄ ≥ 0 the information
    the targets carry about which image they come from (between image and dimension; exp of an entropy is the number
    of dimensions it spreads over):

    - ``uniform`` (the centring dominates the sharpening): H̄ ≥ f·log K, f = ``fraction``. Then
      I ≤ log K − H̄ ≤ (1 − f)·log K whatever the centre does: the targets tell at most K^(1−f) groups of images
      apart (2.3 at K = 4096, f = 0.9), fewer than the classes of any benchmark.
    - ``onehot`` (the sharpening dominates the centring): H(p̄) < ½·log min(K, n), n the teacher rows of a batch
      (KL > ½·log K once n ≥ K): the whole batch's targets spread over fewer than √ of the dimensions it could use
      (64 of 4,096). n sharp rows use at most n dimensions, so a healthy sharp teacher on a small batch (H(p̄) near
      log n) is not taken for one. Each image's target is then low too: H̄ ≤ H(p̄) (entropy is concave).

    With f > ½ no epoch is in both. ``streak`` counts the consecutive epochs up to the last one in each mode,
    ``epochs`` all epochs in each mode.
    """

    patience: int
    fraction: float
    out_dim: int
    rows: int = 0
    """Most teacher rows seen in one step on this rank (0: none yet, read as ``out_dim``)."""
    streak: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLLAPSE_MODES, 0))
    epochs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLLAPSE_MODES, 0))

    @property
    def usable(self) -> int:
        """Dimensions a batch's targets can spread over: min(K, n)."""
        return min(self.out_dim, self.rows or self.out_dim)

    def mode(self, entropy: float, kl: float) -> str | None:
        """The collapse mode of an epoch with mean per-image entropy ``entropy`` and batch-mean KL ``kl``, or None."""
        log_k = math.log(self.out_dim)
        if entropy >= self.fraction * log_k:
            return "uniform"
        if log_k - kl < 0.5 * math.log(self.usable):
            return "onehot"
        return None

    def update(self, entropy: float, kl: float) -> str | None:
        """Count an epoch; the mode whose streak has just reached ``patience`` (warn once per episode), or None."""
        now = self.mode(entropy, kl)
        for m in COLLAPSE_MODES:
            self.streak[m] = self.streak[m] + 1 if m == now else 0
            self.epochs[m] += int(m == now)
        return now if now is not None and self.streak[now] == self.patience else None

    def state_dict(self) -> dict[str, Any]:
        """The counters and the rows seen."""
        return {"rows": self.rows, "streak": dict(self.streak), "epochs": dict(self.epochs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.rows, self.streak, self.epochs = state["rows"], dict(state["streak"]), dict(state["epochs"])


class DINOHead(nn.Module):
    """MLP (GELU; BatchNorm after each hidden layer with ``use_bn``) → bottleneck → L2 normalisation →
    weight-normalised linear layer to ``out_dim``. With ``init='official'`` the MLP's linear layers start as the
    official head's: weights from a normal of std 0.02 truncated at ±2 (absolute, i.e. ±100 std: in effect
    untruncated), biases 0; ``'pytorch'`` keeps PyTorch's initialisation. The last layer keeps PyTorch's, its gain
    fixed to 1."""

    def __init__(self, in_dim: int, out_dim: int = 4096, hidden: int = 2048, bottleneck: int = 256,
                 layers: int = 3, norm_last_layer: bool = True, use_bn: bool = False,
                 init: Literal["official", "pytorch"] = "official") -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        mlp: list[nn.Module] = []
        for i in range(layers):
            mlp.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mlp += [nn.BatchNorm1d(hidden), nn.GELU()] if use_bn else [nn.GELU()]
        self.mlp = nn.Sequential(*mlp)
        for layer in self.mlp if init == "official" else ():
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        g = self.last.parametrizations.weight.original0
        g.data.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


def dino_loss(student: list[Tensor], teacher: list[Tensor], center: Tensor, tau_s: float, tau_t: float) -> Tensor:
    """Mean over (teacher crop i, student crop j ≠ i) of ``mean_batch(−Σ_k P_t^i[k] log P_s^j[k])`` with
    ``P_t = softmax((g_t − c)/τ_t)`` and ``log P_s = log_softmax(g_s/τ_s)``; teacher crops are the first
    ``len(teacher)`` student crops."""
    with torch.autocast(center.device.type, enabled=False):
        targets = [F.softmax((t.float() - center) / tau_t, dim=-1) for t in teacher]
        logs = [F.log_softmax(s.float() / tau_s, dim=-1) for s in student]
        terms = [-(p * logs[j]).sum(-1).mean() for i, p in enumerate(targets) for j in range(len(logs)) if j != i]
        return torch.stack(terms).mean()


def teacher_instruments(p: Tensor) -> tuple[Tensor, Tensor]:
    """Mean entropy of the teacher's per-image distributions ``p`` (rows) and the KL of their mean from uniform."""
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
    p_mean = p.mean(0)
    return entropy, (p_mean * (p_mean.clamp_min(1e-12) * p.shape[-1]).log()).sum()


def knn_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, num_classes: int,
                 k: int = 20, T: float = 0.07, chunk: int = 1024) -> float:
    """Weighted k-NN top-1 (%) on L2-normalised features: cosine similarity, top-k votes ``exp(sim/T)``."""
    train_f, test_f = F.normalize(train_f.float(), dim=1), F.normalize(test_f.float(), dim=1)
    correct = 0
    for s in range(0, len(test_f), chunk):
        sim = test_f[s:s + chunk] @ train_f.T
        top, idx = sim.topk(min(k, len(train_f)), dim=1)
        votes = torch.zeros(len(top), num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], (top / T).exp())
        correct += int((votes.argmax(1) == test_y[s:s + chunk]).sum())
    return 100.0 * correct / max(len(test_f), 1)


def linear_probe_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, num_classes: int,
                          steps: int = 100, weight_decay: float = 1e-4) -> float:
    """Top-1 (%) of a logistic-regression probe on frozen, standardised features (full-batch L-BFGS)."""
    mean, std = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
    xs, xt = (train_f - mean) / std, (test_f - mean) / std
    probe = nn.Linear(xs.shape[1], num_classes).to(xs.device)
    opt = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(xs), train_y) + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return 100.0 * float((probe(xt).argmax(1) == test_y).float().mean())


@dataclass
class DINOOptions:
    """DINO options (CIFAR-scale defaults, docs/methods.md, dino)."""

    out_dim: int = limited(4096, low=2)
    """Output dimension of the head."""
    hidden_dim: int = limited(2048, low=1)
    """Hidden width of the head's MLP."""
    bottleneck_dim: int = limited(256, low=1)
    """Bottleneck before the weight-normalised layer."""
    norm_last_layer: bool = True
    """Fix the weight-norm gain of the last layer to 1."""
    use_bn_in_head: bool = False
    """BatchNorm after each hidden layer of the head (the official code's ``use_bn_in_head``): it removes the
    component that all images share, which dominates a small ResNet's pooled features at initialisation."""
    head_init: Literal["official", "pytorch"] = "official"
    """The head's hidden layers start from the official normal of std 0.02 with zero biases, or from PyTorch's
    default initialisation (``pytorch``: the library before 2026-12-07, kept to reproduce its runs)."""
    teacher_bn: Literal["own", "average"] = "own"
    """The teacher's BatchNorm running statistics: its own, from its train-mode forwards of the global crops (the
    official update moves parameters only), or an EMA of the student's like the weights (``average``: the library
    before 2026-12-07). They matter only where the teacher is evaluated: it trains with batch statistics."""
    student_temp: float = limited(0.1, low=0, low_open=True)
    """Student temperature τ_s."""
    teacher_temp: float = limited(0.04, low=0, low_open=True)
    """Teacher temperature τ_t (the start value under warm-up)."""
    teacher_temp_final: float = limited(0.04, low=0, low_open=True)
    """τ_t after the warm-up (the official README recommends 0.07 for long runs)."""
    teacher_temp_warmup_epochs: int = limited(0, low=0)
    """Epochs W of the linear τ_t warm-up: τ_t rises from ``teacher_temp`` in epoch 1 to ``teacher_temp_final`` in
    epoch W (DINO's ``linspace`` schedule)."""
    center_momentum: float = limited(0.9, low=0, high=1)
    """Momentum m_c of the centre."""
    momentum_teacher: float = limited(0.996, low=0, high=1)
    """EMA momentum at the start; it follows a cosine to 1."""
    freeze_last_layer: int = limited(1, low=0)
    """Epochs during which the last layer of the head is not trained."""
    n_global: int = limited(2, low=1)
    """Global crops (the teacher's views)."""
    n_local: int = limited(4, low=0)
    """Local crops."""
    global_size: int = limited(32, low=1)
    """Global crop side (px)."""
    local_size: int = limited(16, low=1)
    """Local crop side (px)."""
    global_scale: list[float] = limited(lambda: [0.14, 1.0], low=0, high=1, low_open=True, length=2)
    """Area range of the global crops."""
    local_scale: list[float] = limited(lambda: [0.05, 0.14], low=0, high=1, low_open=True, length=2)
    """Area range of the local crops."""
    knn_k: int = limited(20, low=1)
    """Neighbours of the k-NN evaluation."""
    collapse_patience: int = limited(3, low=0)
    """Consecutive epochs of a collapsed teacher (uniform, or on a few dimensions) after which the run warns, once
    per episode (docs/methods.md, dino: collapse); 0 turns the monitor and its ``collapse_*_epochs`` columns off."""
    collapse_uniform_fraction: float = limited(0.9, low=0.5, high=1, low_open=True, high_open=True)
    """An epoch is uniform when the teacher's mean per-image entropy is at least this fraction of ``log out_dim`` (the
    targets then tell at most ``out_dim^(1 − fraction)`` groups of images apart); above ½, as the few-dimensions mode
    lies below ½·log out_dim."""
    controls: bool = True
    """Score two controls with the same protocol: the network at initialisation (``knn_init_*``, ``probe_init_*``)
    and the standardised pixels, flattened (``knn_pixels_*``, ``probe_pixels_*``); computed once, at the first
    evaluation, from a copy of the network taken at set-up."""

    def __post_init__(self) -> None:
        if self.n_global + self.n_local < 2:
            raise ValueError(f"n_global + n_local must be at least 2 (the loss pairs each teacher crop with another "
                             f"crop), got {self.n_global} + {self.n_local}")
        for key in ("global_scale", "local_scale"):
            low, high = getattr(self, key)
            if low > high:
                raise ValueError(f"{key} is an area range [low, high], got low {low} > high {high}")


@register_method("dino")
class DINO(Method):
    """DINO: self-supervised EMA self-distillation with multi-crop, centring and sharpening; k-NN and probe eval."""

    Options = DINOOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "official": {"norm_last_layer": True, "freeze_last_layer": 1},
        "clean": {"norm_last_layer": True, "freeze_last_layer": 1},
        # 32-px images and a few thousand steps (docs/methods.md, dino): BN in the head, a faster teacher, and crops
        # that keep enough pixels
        "small": {"use_bn_in_head": True, "momentum_teacher": 0.99, "teacher_temp": 0.04, "teacher_temp_final": 0.04,
                  "global_scale": [0.4, 1.0], "local_scale": [0.1, 0.4]},
    }
    supervised = False

    @classmethod
    def data_requirements(cls, options: DINOOptions) -> DataRequirements:
        o = options
        return DataRequirements(multicrop=MultiCrop(o.n_global, o.n_local, o.global_size, o.local_size,
                                                    tuple(o.global_scale), tuple(o.local_scale)))

    @classmethod
    def cost(cls, options: DINOOptions) -> float:
        return options.n_global + options.n_local * (options.local_size / options.global_size) ** 2

    def setup(self, model: nn.Module) -> None:
        """Build the head, the EMA teacher (backbone + head), the centre, the feature hooks, and the copy of the
        network at initialisation that the controls score."""
        o = self.opt
        net = unwrap(model)
        fc = last_linear(net)
        fc.requires_grad_(False)  # no loss reads the logits; DDP (wrapped after set-up) then expects no gradient
        self.head = DINOHead(fc.in_features, o.out_dim, o.hidden_dim, o.bottleneck_dim,
                             norm_last_layer=o.norm_last_layer, use_bn=o.use_bn_in_head,
                             init=o.head_init).to(self.ctx.device)
        self.teacher = ModelEMA(nn.ModuleDict({"backbone": net, "head": self.head}), o.momentum_teacher,
                                buffers=o.teacher_bn)
        self.teacher.module = self.ctx.sync_batchnorm(self.teacher.module)  # it runs in train mode
        self.init_backbone: nn.Module | None = copy.deepcopy(net).requires_grad_(False) if o.controls else None
        self.controls: dict[str, float] = {}
        self.feats: dict[str, Tensor] = {}
        for key, backbone in (("student", net), ("teacher", self.teacher.module["backbone"]),
                              ("init", self.init_backbone)):
            if backbone is not None:
                last = last_linear(backbone)
                last.register_forward_pre_hook(partial(self._keep_features, key))
        self.center = torch.zeros(1, o.out_dim, device=self.ctx.device)
        self.step = 0
        self.collapse = CollapseMonitor(o.collapse_patience, o.collapse_uniform_fraction, o.out_dim)

    def _keep_features(self, key: str, _module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self.feats[key] = args[0]

    def trainable_modules(self) -> list[nn.Module]:
        """The student's projection head."""
        return [self.head]

    def teacher_temp(self, epoch: int) -> float:
        """τ_t at 1-based ``epoch``: DINO's schedule, ``linspace(start, final, W)`` indexed by the 0-based epoch, so
        epoch 1 has ``start`` and epoch ``W`` already has ``final`` (``W = 1``: ``start`` for one epoch)."""
        o = self.opt
        w = o.teacher_temp_warmup_epochs
        if epoch > w:
            return o.teacher_temp_final
        if w == 1:
            return o.teacher_temp
        return o.teacher_temp + (o.teacher_temp_final - o.teacher_temp) * (epoch - 1) / (w - 1)

    def on_epoch_start(self, epoch: int) -> None:
        """Freeze the head's last layer early on."""
        self.head.last.parametrizations.weight.original1.requires_grad_(epoch > self.opt.freeze_last_layer)

    def on_epoch_end(self, epoch: int, train: dict[str, float]) -> dict[str, float]:
        """Judge the epoch's mean teacher instruments (:class:`CollapseMonitor`); warn (rank 0) when a collapse has
        lasted ``collapse_patience`` epochs, once per episode. Columns: ``collapse_<mode>_epochs``, the epochs so far
        in each mode."""
        h, kl = train.get("train_teacher_entropy"), train.get("train_kl_teacher_uniform")
        if self.opt.collapse_patience == 0 or h is None or kl is None:
            return {}
        mode = self.collapse.update(h, kl)
        if mode is not None and self.ctx.rank == 0:
            warnings.warn(self._collapse_message(mode, epoch, h, kl), TeacherCollapseWarning, stacklevel=2)
        return {f"collapse_{m}_epochs": float(n) for m, n in self.collapse.epochs.items()}

    def _collapse_message(self, mode: str, epoch: int, entropy: float, kl: float) -> str:
        """What the teacher did in ``mode`` up to ``epoch`` and the settings to change, as a user writes them."""
        o, c = self.opt, self.collapse
        k, log_k = o.out_dim, math.log(o.out_dim)

        def setting(key: str, value: Any) -> str:
            return f"method.{key}=" + (str(value).lower() if isinstance(value, bool) else f"{value:g}")

        def temperatures(scale: float) -> str:
            return " ".join(setting(key, min(scale * getattr(o, key), o.student_temp))
                            for key in ("teacher_temp", "teacher_temp_final"))

        if mode == "uniform":
            what = (f"near-uniform: each image's target spreads over {math.exp(entropy):.0f} of {k} dimensions "
                    f"(entropy {entropy:.2f} of log K = {log_k:.2f} nats, at least {c.fraction:g}·log K) and the "
                    f"targets tell at most {math.exp(log_k - entropy):.1f} groups of images apart: the centring "
                    "dominates the sharpening. To sharpen it")
            changes = [f"{temperatures(0.5)} (lower temperatures)",
                       *([setting("use_bn_in_head", True)] if not o.use_bn_in_head else []),
                       setting("out_dim", max(k // 4, 2)),
                       *(["method.preset=small"] if any(getattr(o, key) != value
                                                        for key, value in self.PRESETS["small"].items()) else [])]
        else:
            what = (f"on a few dimensions: the batch's mean target spreads over {math.exp(log_k - kl):.1f} of {k} "
                    f"dimensions (under the square root of the {c.usable} it could use), each image's "
                    f"over {math.exp(entropy):.1f}: the sharpening dominates the centring. To flatten it")
            changes = [*([f"{setting('center_momentum', 2 * o.center_momentum - 1)} (a faster centre)"]
                         if o.center_momentum > 0.5 else []),
                       f"{temperatures(2.0)} (higher temperatures, at most method.student_temp)",
                       "a lower optim.lr (e.g. half)"]
        return (f"dino: for {c.patience} epochs ({epoch - c.patience + 1}–{epoch}) the teacher has been {what}, "
                f"change one of: {'; '.join(changes)} (docs/methods.md, dino: collapse)")

    def teacher_momentum(self, step: int) -> float:
        """EMA momentum of the teacher update after optimiser step ``step`` (0-based): DINO's cosine from
        ``momentum_teacher`` at step 0 towards 1 over the run."""
        return cosine_to_one(self.opt.momentum_teacher, step, self.ctx.epochs * self.ctx.steps_per_epoch)

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        views, ng = batch.views, o.n_global
        model(torch.cat(views[:ng]))
        feats = [self.feats["student"]]
        if len(views) > ng:
            model(torch.cat(views[ng:]))
            feats.append(self.feats["student"])
        student = list(self.head(torch.cat(feats)).chunk(len(views)))  # one head pass: its BN sees every crop
        with torch.no_grad():
            self.teacher.module.train()  # batch statistics, as the official teacher (never put in eval mode)
            self.teacher.module["backbone"](torch.cat(views[:ng]))
            t_out = self.teacher.module["head"](self.feats["teacher"]).float()
        teacher = list(t_out.chunk(ng))
        tau_t = self.teacher_temp(epoch)
        loss = dino_loss(student, teacher, self.center, o.student_temp, tau_t)
        with torch.no_grad():
            p = F.softmax((t_out - self.center) / tau_t, -1)
            entropy, kl_uniform = teacher_instruments(p)
            agreement = (torch.cat(student[:ng]).argmax(-1) == p.argmax(-1)).float().mean()
            update_center(self.center, t_out, self.opt.center_momentum, self.ctx.world)
        self.collapse.rows = max(self.collapse.rows, len(t_out))
        stats = {"teacher_entropy": entropy, "kl_teacher_uniform": kl_uniform, "center_norm": self.center.norm(),
                 "student_teacher_agreement": agreement, "teacher_temp": torch.tensor(tau_t),
                 "teacher_momentum": torch.tensor(self.teacher_momentum(self.step))}
        return StepOutput({"dino": loss}, None, batch.y, stats)

    def after_step(self, model: nn.Module) -> None:
        """EMA update of the teacher with the momentum of this step (DINO's cosine schedule, indexed from 0)."""
        self.teacher.decay = self.teacher_momentum(self.step)
        self.teacher.update(nn.ModuleDict({"backbone": unwrap(model), "head": self.head}))
        self.step += 1

    @staticmethod
    def _over_split(data: Any, split: Any, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """``fn`` of the split's standardised images, batch by batch in order (the whole split on every rank: the
        k-NN bank must be complete), concatenated."""
        bs = data.cfg.eval_batch_size
        return torch.cat([fn(data._prepare(split.images[s:s + bs])) for s in range(0, len(split), bs)])

    @torch.no_grad()
    def _features(self, backbone: nn.Module, key: str, data: Any, split: Any) -> Tensor:
        def features(x: Tensor) -> Tensor:
            backbone(x)
            return self.feats[key].float()

        was = backbone.training
        backbone.eval()
        out = self._over_split(data, split, features)
        backbone.train(was)
        return out

    @classmethod
    def _pixels(cls, data: Any, split: Any) -> Tensor:
        """The split's standardised images, area-averaged to at most ``PIXEL_SIDE`` px a side, flattened."""
        def pixels(x: Tensor) -> Tensor:
            x = x.float()
            return F.adaptive_avg_pool2d(x, (min(x.shape[-2], PIXEL_SIDE), min(x.shape[-1], PIXEL_SIDE))).flatten(1)

        return cls._over_split(data, split, pixels)

    def _score(self, who: str, features: Callable[[Any], Tensor], data: Any, probe: bool) -> dict[str, float]:
        """k-NN (and with ``probe`` the linear probe) top-1 of ``features`` on test and, if held out, validation."""
        out: dict[str, float] = {}
        splits = {"test": data.test, **({"val": data.val} if data.val is not None else {})}
        y_train = data.train.labels.to(self.ctx.device)
        f_train = features(data.train)
        for name, split in splits.items():
            f = features(split)
            y = split.labels.to(self.ctx.device)
            out[f"knn_{who}_{name}_top1"] = knn_accuracy(f_train, y_train, f, y, self.ctx.num_classes, self.opt.knn_k)
            if probe:
                out[f"probe_{who}_{name}_top1"] = linear_probe_accuracy(f_train, y_train, f, y, self.ctx.num_classes)
        return out

    def extra_metrics(self, model: nn.Module, data: Any, final: bool) -> dict[str, float]:
        """k-NN top-1 of student and teacher features (test; validation if held out); linear probe at the end. The
        controls (network at initialisation, pixels) are scored once, at the first call: k-NN logged at every
        evaluation, the probe at the end, where a student no better than its best control by k-NN (validation if
        held out) is warned about."""
        out: dict[str, float] = {}
        for who, backbone in (("student", unwrap(model)), ("teacher", self.teacher.module["backbone"])):
            out.update(self._score(who, partial(self._features, backbone, who, data), data, final))
        if self.init_backbone is not None:
            self.controls = {**self._score("init", partial(self._features, self.init_backbone, "init", data), data,
                                           True),
                             **self._score("pixels", partial(self._pixels, data), data, True)}
            self.init_backbone = None
        out.update({k: v for k, v in self.controls.items() if final or k.startswith("knn_")})
        split = "val" if data.val is not None else "test"
        control = max((v for k, v in self.controls.items() if k.startswith("knn_") and k.endswith(f"_{split}_top1")),
                      default=None)
        if final and control is not None and out[f"knn_student_{split}_top1"] <= control:
            warnings.warn(f"dino: the student's k-NN top-1 on {split} ({out[f'knn_student_{split}_top1']:.2f}) is not "
                          f"above its controls' best ({control:.2f}: the network at initialisation or the pixels): "
                          "the features have not learnt (docs/methods.md, dino: preset small)", stacklevel=2)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Teacher, centre, step (the momentum schedule's position), the collapse counters, the controls' scores
        and, until they are scored, the network at initialisation."""
        return {"teacher": self.teacher.module.state_dict(), "center": self.center, "step": self.step,
                "collapse": self.collapse.state_dict(), "controls": self.controls,
                "init": None if self.init_backbone is None else self.init_backbone.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the teacher, the centre, the schedule position, the collapse counters and the controls (a
        checkpoint written before the counters or the controls existed lacks them: the counters start at 0, the run
        goes on without controls)."""
        self.teacher.module.load_state_dict(state["teacher"])
        self.center.copy_(state["center"])
        self.step = state["step"]
        if "collapse" in state:
            self.collapse.load_state_dict(state["collapse"])
        self.controls = dict(state.get("controls", {}))
        if state.get("init") is None:
            self.init_backbone = None
        elif self.init_backbone is not None:
            self.init_backbone.load_state_dict(state["init"])
