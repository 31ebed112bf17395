"""Intermediate features by module name, through forward hooks (the model's forward is unchanged)."""

from __future__ import annotations

from collections.abc import Iterable

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
