"""SIG: a horizontal sinusoid added to every row (docs/methods.md 1.3).

The CLIP papers use SIG as a poison-label attack (random images get target captions), not as the
clean-label attack it was designed as; the poisoning stage follows the CLIP papers.
"""

from __future__ import annotations

import math

import torch

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers.base import Trigger


@TRIGGERS.register("sig")
class SIG(Trigger):
    name = "sig"

    def __init__(self, *, delta: float = 60 / 255, frequency: float = 6, image_size: int = 224):
        if delta <= 0 or frequency <= 0:
            raise ConfigError("SIG delta and frequency must be positive")
        self.delta, self.frequency = float(delta), float(frequency)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        width = images.shape[-1]
        columns = torch.arange(width, device=images.device, dtype=images.dtype)
        signal = self.delta * torch.sin(2 * math.pi * columns * self.frequency / width)
        return (images + signal.view(1, 1, 1, width)).clamp(0, 1)
