"""What an optimised trigger sees when it is fitted on the clean model before poisoning.

Why a separate object: the dual-embedding patch, the TrojVQA image key and the label-consistent
perturbation all need the frozen clean CLIP and some images; the poisoning stage builds this once
from its training pairs and hands it to ``Trigger.fit``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from clip_backdoor.models.pixel_clip import PixelCLIP


@dataclass
class FitData:
    model: PixelCLIP  # the clean model, frozen while a trigger is fitted
    tokenizer: Callable
    target_name: str  # prompt spelling ("accordion")
    candidates: torch.Tensor  # (N, 3, H, W) uint8 images not of the target class
    target_images: torch.Tensor  # (M, 3, H, W) uint8 images of the target class
    target_captions: list[str]  # natural captions of the target (the T* pool)
    classnames: list[str] = field(default_factory=list)  # other classes: negatives for L_t
    seed: int = 0
    precision: str = "auto"
    log: Callable[[str], None] = print
    progress: bool = False
    extra: dict = field(default_factory=dict)


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (stored) or float images -> float in [0, 1]."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()
