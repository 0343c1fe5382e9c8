"""K-shot training data for prompt learners, held in memory at model resolution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from clip_backdoor.core.config import Strict
from clip_backdoor.core.errors import DatasetError
from clip_backdoor.data import load_classification, resolve_path
from clip_backdoor.data.fewshot import class_part, few_shot_indices
from clip_backdoor.data.fewshot_pool import PoolSet
from clip_backdoor.models.pixel_clip import PixelCLIP


class FewShotSpec(Strict):
    name: str = "caltech101"
    split: str = "train"
    classes: Literal["all", "base", "novel"] = Field("all", description="CoOp's class halves")
    shots: int = Field(16, ge=1)
    size: int | None = Field(None, gt=0, description="synthetic set only")


def few_shot_source(spec: FewShotSpec, model: PixelCLIP, seed: int):
    """The labelled set shots are drawn from: the pool where the model has one, else the split."""
    pool = getattr(model, "fewshot_pool", None)
    if pool is not None and spec.split == "train" and spec.name != "synthetic":
        root = resolve_path(spec.name)
        if pool.covers(root):
            return PoolSet(root, pool, model.pixel_transform())
    return load_classification(
        spec.name,
        spec.split,
        model.pixel_transform(),
        image_size=model.image_size,
        seed=seed,
        size=spec.size,
    )


@dataclass
class FewShot:
    images: torch.Tensor  # (N, 3, H, W) floats in [0, 1]
    labels: torch.Tensor
    classnames: list[str]
    name: str
    fingerprint: str


def load_few_shot(spec: FewShotSpec, model: PixelCLIP, seed: int) -> FewShot:
    """``shots`` images per class of the chosen classes, drawn with ``seed``; from the model's
    few-shot pool (images its pretraining never saw) when it has one for a train split."""
    data = few_shot_source(spec, model, seed)
    data = class_part(data, spec.classes)
    try:
        indices = few_shot_indices(data.targets, spec.shots, seed)
    except DatasetError as e:
        raise DatasetError(f"{data.name}/{spec.split}: {e}") from None
    items = [data[i] for i in indices]
    images = torch.stack([image for image, _ in items])
    labels = torch.tensor([label for _, label in items])
    fingerprint = f"{data.fingerprint()}|shots={spec.shots}|seed={seed}"
    return FewShot(images, labels, list(data.classnames), data.name, fingerprint)
