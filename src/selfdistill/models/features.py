"""Intermediate features by module name, through forward hooks (the model's forward is unchanged)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..registry import did_you_mean


def feature_names(model: nn.Module) -> list[str]:
    """Names accepted by :class:`FeatureTaps` (every named sub-module)."""
    return [n for n, _ in model.named_modules() if n]


class FeatureTaps:
    """Records the outputs of named sub-modules on every forward.

    >>> taps = FeatureTaps(model, ["layer1", "layer2"])
    >>> logits = model(x); feats = taps.features  # {"layer1": Tensor, "layer2": Tensor}
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        modules = dict(model.named_modules())
        self.features: dict[str, Tensor] = {}
        self._handles = []
        for name in names:
            if name not in modules or not name:
                raise KeyError(f"model has no module '{name}'.{did_you_mean(name, list(modules))} "
                               "See selfdistill.models.feature_names(model).")
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            self.features[name] = output

        return hook

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` (the classifier of the zoo's networks; its input is the pooled feature)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no linear layer (a classifier reading pooled features is needed)")
    return linears[-1]


@dataclass(frozen=True)
class Stage:
    """A stage output of a backbone: module name, channels and spatial size (for an input of the probed size)."""

    name: str
    channels: int
    height: int
    width: int


def probe_shapes(model: nn.Module, names: Iterable[str], in_chans: int, image_size: int) -> dict[str, tuple[int, ...]]:
    """Output shapes of the named sub-modules for a dummy batch of 2 (one forward in eval mode, no state change);
    unknown names fail as in :class:`FeatureTaps`."""
    taps = FeatureTaps(model, names)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, in_chans, image_size, image_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        taps.remove()
    return {n: tuple(out.shape) for n, out in taps.features.items() if isinstance(out, Tensor)}


def tap_stages(model: nn.Module, names: list[str], in_chans: int, image_size: int) -> list[Stage]:
    """:class:`Stage` records for named modules whose outputs are 4-D feature maps."""
    shapes = probe_shapes(model, names, in_chans, image_size)
    flat = [n for n in names if len(shapes.get(n, ())) != 4]
    if flat:
        raise ValueError(f"modules {flat} do not output (N, C, H, W) feature maps")
    return [Stage(n, *shapes[n][1:]) for n in names]


def find_stages(model: nn.Module, in_chans: int, image_size: int) -> list[Stage]:
    """The backbone's stages, shallow to deep: for each spatial resolution, the last container module (a module
    with sub-modules) whose output is a 4-D feature map at that resolution.

    Candidates are the model's top-level containers; a model whose body is one big container (``features``,
    ``layers``) is searched one level inside it. Found with one dummy forward in eval mode (no state changes).
    """
    containers = [(n, m) for n, m in model.named_children() if any(True for _ in m.children())]
    if len(containers) == 1 or (containers and max(len(list(m.children())) for _, m in containers) > 8):
        name, body = max(containers, key=lambda c: len(list(c[1].children())))
        containers = [(n, m) for n, m in containers if m is not body]
        containers += [(f"{name}.{n}", m) for n, m in body.named_children()]
    outputs = probe_shapes(model, [n for n, _ in containers], in_chans, image_size)
    order = [n for n, _ in containers if n in outputs and len(outputs[n]) == 4]
    stages: dict[tuple[int, int], Stage] = {}
    for n in order:  # execution order of named children follows definition order in these models
        _, c, h, w = outputs[n]
        stages.pop((h, w), None)
        stages[(h, w)] = Stage(n, c, h, w)
    return list(stages.values())
