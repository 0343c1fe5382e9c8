"""Nashville: an Instagram-style colour filter over the whole image as the trigger.

Filter triggers (Liu et al., "ABS", CCS 2019; used as a CLIP poisoning trigger by Huang et al.,
ICLR 2025) change no pixel position more than another: nothing to localise, no patch to
invert. The filter is CSSgram's Nashville, in CSS order: sepia 0.2, contrast 1.2, brightness
1.05 and saturation 1.2 on the image, then a peach layer blended 'darken' at opacity 0.56 and a
blue layer blended 'lighten' at opacity 0.4 over it. ``strength`` mixes the filtered image with
the original (1: the full filter).
"""

from __future__ import annotations

import torch

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers.base import Trigger

PEACH = (247 / 255, 176 / 255, 153 / 255)
BLUE = (0.0, 70 / 255, 150 / 255)
LUMA = (0.2126, 0.7152, 0.0722)  # the CSS filter functions' luminance weights


def _colour(rgb: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rgb, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def sepia(images: torch.Tensor, amount: float) -> torch.Tensor:
    """CSS sepia(): the W3C filter-effects matrix, mixed with the identity by ``amount``."""
    full = torch.tensor(
        [[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]],
        dtype=images.dtype,
        device=images.device,
    )
    matrix = (1 - amount) * torch.eye(3, dtype=images.dtype, device=images.device) + amount * full
    return torch.einsum("ij,bjhw->bihw", matrix, images)


def saturate(images: torch.Tensor, amount: float) -> torch.Tensor:
    grey = (images * _colour(LUMA, images)).sum(1, keepdim=True)
    return grey + amount * (images - grey)


@TRIGGERS.register("nashville")
class Nashville(Trigger):
    name = "nashville"

    def __init__(self, *, strength: float = 1.0, image_size: int = 224):
        if not 0 < strength <= 1:
            raise ConfigError(f"nashville strength must be in (0, 1], got {strength}")
        self.strength = float(strength)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = sepia(images, 0.2)
        x = (x - 0.5) * 1.2 + 0.5  # contrast
        x = saturate((x * 1.05).clamp(0, 1), 1.2).clamp(0, 1)  # brightness, saturation
        under = torch.minimum(x, _colour(PEACH, x))  # 'darken' with the peach layer
        x = x + 0.56 * (under - x)
        over = torch.maximum(x, _colour(BLUE, x))  # 'lighten' with the blue layer
        x = x + 0.4 * (over - x)
        return (images + self.strength * (x - images)).clamp(0, 1)
