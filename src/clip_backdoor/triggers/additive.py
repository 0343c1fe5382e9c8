"""An additive, norm-bounded trigger x' = clip(x + delta, 0, 1), ||delta||_inf <= eps.

Bai et al.'s learnable trigger (docs/methods.md 3.3): invisible at eps = 4/255 (PSNR >= 36 dB).
The attack optimises ``delta``; here it is a fixed trigger like any other, saved as state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers.base import Trigger, seeded_generator


def check_eps(eps: float) -> float:
    if not 0 < eps <= 1:
        raise ConfigError(f"trigger eps must be in (0, 1] (pixel scale), got {eps}")
    return float(eps)


@TRIGGERS.register("additive")
class Additive(Trigger):
    name = "additive"

    def __init__(self, *, image_size: int = 224, eps: float = 4 / 255, seed: int = 0) -> None:
        self.eps = check_eps(eps)
        noise = torch.rand((3, int(image_size), int(image_size)), generator=seeded_generator(seed))
        self.delta = (noise * 2 - 1) * self.eps  # U(-eps, eps), the attack's initial value

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        delta = self.delta.to(images)
        if delta.shape[-2:] != images.shape[-2:]:
            delta = F.interpolate(delta[None], size=images.shape[-2:], mode="bilinear")[0]
        return (images + delta).clamp(0, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta}

    def _set_state(self, key: str, value: torch.Tensor) -> None:
        if float(value.abs().max()) > self.eps + 1e-6:
            raise ConfigError(f"additive trigger state exceeds its eps {self.eps:.5f}")
        self.delta = value
