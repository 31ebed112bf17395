"""Born-again networks: generations of one architecture, each distilled from the previous one (docs/methods.md, ban).

``selfdistill train`` of a ``ban`` config runs generation 0 (plain CE) and then ``generations`` students, each
a freshly initialised network taught by the previous generation's last checkpoint, every generation in its
own run directory ``<run>/gen<k>`` (seed ``seed + k``). A killed run resumes at the generation and epoch where
it stopped. The run's ``summary.json`` holds every generation's metrics and the ensemble of generations 1..k
(mean of softmax), for each k.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch
from ..config import RunConfig, limited, parse_config, to_dict
from ..engine.summary import RunSummary
from ..losses import KLReduction, cross_entropy, kd_loss, soft_cross_entropy
from .base import StepOutput, register_method
from .teacher import TeacherMethod, TeacherOptions


def dkpp_targets(teacher_probs: Tensor, generator: torch.Generator) -> Tensor:
    """DKPP targets: each row keeps its arg-max probability in place; the other probabilities are randomly
    permuted among the other classes (one permutation per row)."""
    b, k = teacher_probs.shape
    top = F.one_hot(teacher_probs.argmax(1), k).bool()
    keys = torch.rand(b, k, generator=generator).to(teacher_probs.device)
    order = torch.arange(k, device=teacher_probs.device).float().expand(b, k)
    src = torch.where(top, -1.0, order).argsort(1)  # [arg-max, the others in class order]
    dst = torch.where(top, -1.0, keys).argsort(1)  # [arg-max, the others in random order]
    return torch.zeros_like(teacher_probs).scatter(1, dst, teacher_probs.gather(1, src))


def cwtm_weights(teacher_probs: Tensor) -> Tensor:
    """CWTM per-sample weights ``max_c p_ic / Σ_j max_c p_jc`` (they sum to 1 over the batch)."""
    conf = teacher_probs.max(1).values
    return conf / conf.sum()


@dataclass
class BANOptions(TeacherOptions):
    """Born-again network options. ``teacher`` and ``generation`` are set by the generation runner."""

    generations: int = limited(3, low=1)
    """Student generations after generation 0 (the library default, 4 trainings in all)."""
    loss: Literal["ban", "ban+label", "kd", "cwtm", "dkpp"] = "ban"
    """``ban``: soft-target CE at T=1 against the previous generation, no label term; ``ban+label`` adds CE;
    ``kd``: w_ce·CE + w_kd·KD_T; ``cwtm``: label CE weighted by the teacher's per-sample confidence; ``dkpp``:
    soft-target CE against the teacher distribution with its non-arg-max entries permuted [unverified forms]."""
    T: float = limited(1.0, low=0, low_open=True)
    """Temperature of the ``kd`` loss."""
    w_ce: float = limited(0.1, low=0)
    """Label CE weight of the ``kd`` loss."""
    w_kd: float = limited(0.9, low=0)
    """Distillation weight of the ``kd`` loss."""
    kl_reduction: KLReduction = "batchmean"
    """Reduction of the ``kd`` loss's KL (the ``ban_reimpl`` preset uses ``elementwise_mean``)."""
    ensemble_gen0: bool = False
    """Include generation 0 in the ensemble."""
    generation: int = limited(-1, low=-1)
    """Which generation this run is: -1 runs them all (what users set); k ≥ 0 is one generation (set by the runner)."""


@register_method("ban")
class BornAgain(TeacherMethod):
    """Born-again networks: N generations, each distilled from the previous one; ensemble of generations."""

    Options = BANOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "official": {"loss": "ban", "T": 1.0},
        "clean": {"loss": "ban", "T": 1.0},
        "ban_reimpl": {"loss": "kd", "T": 20.0, "w_ce": 0.1, "w_kd": 0.9, "kl_reduction": "elementwise_mean"},
    }

    @classmethod
    def stages(cls, options: BANOptions, cfg: RunConfig) -> list[RunConfig] | None:
        """One run config per generation (``None`` when this run is itself one generation)."""
        if options.generation >= 0:
            return None
        top = Path(cfg.out) / cfg.run_name()
        out = []
        for k in range(options.generations + 1):
            d = to_dict(cfg)
            d["method"] = {**cfg.method, "generation": k,
                           "teacher": str(top / f"gen{k - 1}" / "last.pt") if k else ""}
            d.update(name=f"gen{k}", out=str(top), seed=cfg.seed + k)
            out.append(parse_config(d))
        return out

    @classmethod
    def finish_stages(cls, options: BANOptions, cfg: RunConfig, summaries: list[RunSummary],
                      score: Callable[[list[Path]], dict[str, float]]) -> RunSummary:
        """The run's summary: the last generation's metrics, every generation's, the mean-softmax ensembles of
        generations 1..k (0..k with ``ensemble_gen0``) for each k (scored by ``score``), the total cost."""
        top = Path(cfg.out) / cfg.run_name()
        gens = [{"generation": k, "run": s.run, "last": s.last, "best_val": s.best_val,
                 "seconds_per_epoch": s.seconds_per_epoch} for k, s in enumerate(summaries)]
        checkpoints = [Path(s.run) / "last.pt" for s in summaries]
        first = 0 if options.ensemble_gen0 else 1
        ensemble = [{"generations": list(range(first, k + 1)), **score(checkpoints[first:k + 1])}
                    for k in range(max(first, 1), len(checkpoints))]
        summary = dataclasses.replace(
            copy.deepcopy(summaries[-1]), run=str(top), seed=cfg.seed, config=to_dict(cfg), generations=gens,
            ensemble=ensemble, seconds_per_epoch=sum(s.seconds_per_epoch for s in summaries),
            passes_per_step=sum(s.passes_per_step for s in summaries),
            images_per_s=1.0 / sum(1.0 / s.images_per_s for s in summaries),
            cost_note="seconds_per_epoch and passes_per_step are summed over all generations",
            teachers={})  # each generation's teacher is the previous generation, listed in `generations`
        last_csv = Path(summaries[-1].run) / "metrics.csv"
        if last_csv.is_file():  # the curves of the run are the last generation's
            shutil.copyfile(last_csv, top / "metrics.csv")
        return summary

    def setup(self, model: nn.Module) -> None:
        """Generation 0 has no teacher; later generations load the previous one."""
        if self.opt.generation != 0:
            super().setup(model)

    def teachers(self) -> dict[str, nn.Module]:
        """The previous generation (none for generation 0)."""
        return {} if self.opt.generation == 0 else {f"teacher (generation {self.opt.generation - 1})": self.teacher}

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        zt = None if o.generation == 0 else self.teacher(batch.x)  # the teacher first, as in kd
        zs = model(batch.x)
        y = batch.y
        if zt is None:
            return StepOutput({"ce": cross_entropy(zs, y)}, zs, y)
        pt = zt.softmax(1)
        if o.loss == "ban":
            losses = {"soft_ce": soft_cross_entropy(zs, pt)}
        elif o.loss == "ban+label":
            losses = {"soft_ce": soft_cross_entropy(zs, pt), "ce": cross_entropy(zs, y)}
        elif o.loss == "kd":
            losses = {"ce": o.w_ce * cross_entropy(zs, y), "kd": o.w_kd * kd_loss(zt, zs, o.T, o.kl_reduction)}
        elif o.loss == "cwtm":
            w = cwtm_weights(pt)
            losses = {"cwtm": (w * F.cross_entropy(zs.float(), y, reduction="none")).sum()}
        else:
            losses = {"soft_ce": soft_cross_entropy(zs, dkpp_targets(pt, batch.generator()))}
        return StepOutput(losses, zs, y)
