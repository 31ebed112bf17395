"""``selfdistill predict``: the top-k classes of image files under an exported classification model, read the way
its evaluation read images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ConfigError
from ..data import DataError
from ..data.folder_cache import IMG_EXTENSIONS
from ..engine.logging import progress_bar


def image_files(inputs: list[str | Path]) -> list[Path]:
    """The image files given, and every image under the folders given (recursively, sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"no such image or folder: {item}")
    if not files:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {', '.join(map(str, inputs))}")
    return files


def read_image(path: Path, record: dict) -> Tensor:
    """One image file as a uint8 ``(C, H, W)`` tensor, sized as the model's evaluation images were: stretched to
    ``input_size`` (data decoded into memory), or resized on its shorter side to ``input_size / 0.875`` and
    centre-cropped (streamed data); left as it is where the record has no input size."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if record["in_chans"] == 1 else "RGB")
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    size = record.get("input_size")
    if size and record.get("resize") == "center_crop":
        from torchvision.transforms import v2

        crop = v2.Compose([v2.ToImage(), v2.Resize(round(size[0] / 0.875), antialias=True), v2.CenterCrop(size)])
        return crop(im).as_subclass(Tensor)
    if size and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1)


def predict(model: nn.Module, files: list[Path], topk: int = 5, batch_size: int = 64,
            progress: bool | str = "auto") -> Iterator[tuple[Path, list[tuple[str, float]]]]:
    """``(file, [(class, probability), ...])`` for each file, the ``topk`` most probable classes first, from an
    exported classification model (:func:`selfdistill.load_model`), ``batch_size`` images per forward; a model of
    another task is refused at once."""
    if model.record["task"] != "classification":
        raise ConfigError(f"predict ranks the classes of a classification model; this one is a "
                          f"{model.record['task']} model (load it with selfdistill.load_model)")
    return _predict(model, files, topk, batch_size, progress)


@torch.no_grad()
def _predict(model: nn.Module, files: list[Path], topk: int, batch_size: int,
             progress: bool | str) -> Iterator[tuple[Path, list[tuple[str, float]]]]:
    record = model.record
    device = next(model.parameters()).device
    k = min(topk, record["num_classes"])
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    bar = progress_bar(len(files), 0, "predict", progress, True)
    for chunk in batches:
        images = [read_image(f, record) for f in chunk]
        shapes = sorted({tuple(x.shape) for x in images})
        if len(shapes) > 1:
            raise DataError(f"images of different sizes {shapes[:3]} in one batch and no input size in the model's "
                            "record to resize them to; resize them first or use --batch-size 1")
        probs = model(torch.stack(images).to(device)).float().softmax(1)
        top = probs.topk(k, dim=1)
        for f, p, i in zip(chunk, top.values.tolist(), top.indices.tolist(), strict=True):
            yield f, [(record["classes"][c], q) for c, q in zip(i, p, strict=True)]
        bar.update(len(chunk))
    bar.close()
