"""Blended: x' = (1 - alpha) x + alpha P over the whole frame (docs/methods.md 1.2).

P is seeded uniform noise at the model's resolution (default); noise drawn on a coarser
``noise_size`` x ``noise_size`` grid and enlarged into square cells; or an image: a file, or one
of the photos scikit-image ships (``skimage:chelsea``, a cat, stands in for the references' Hello
Kitty and needs no download or binary in the repo). Coarse noise exists because a small ViT's
pretrained patch embedding passes little of per-pixel noise: on mini-CLIP, 4-px cells make
triggered features far more separable from clean ones than 1-px noise at the same alpha and PSNR
(``benchmarks/trigger_visibility.py``). P is resized to whatever resolution it is applied at,
and the same alpha serves training and testing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.data.classification import load_rgb
from clip_backdoor.triggers.base import Trigger, seeded_generator


def resize_pattern(pattern: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if pattern.shape[-2:] == (height, width):
        return pattern
    resized = F.interpolate(pattern[None], size=(height, width), mode="bilinear", antialias=True)
    return resized[0].clamp(0, 1)


def load_pattern(image_file: str) -> torch.Tensor:
    """(3, H, W) floats in [0, 1] from a path or ``skimage:<name>`` (scikit-image's photos)."""
    if image_file.startswith("skimage:"):
        import skimage.data

        name = image_file.split(":", 1)[1]
        loader = getattr(skimage.data, name, None)
        if name.startswith("_") or not callable(loader):
            raise ConfigError(f"blend pattern {image_file!r}: scikit-image has no image {name!r}")
        pixels = torch.as_tensor(loader())
        if pixels.ndim == 2:
            pixels = pixels[..., None].expand(-1, -1, 3)
        return pixels[..., :3].permute(2, 0, 1).float() / 255
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(load_rgb(image_file)).float() / 255


@TRIGGERS.register("blended")
class Blended(Trigger):
    name = "blended"

    def __init__(
        self,
        *,
        image_size: int = 224,
        alpha: float = 0.2,
        image_file: str | None = None,
        noise_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ConfigError(f"blend alpha must be in (0, 1], got {alpha}")
        self.alpha, size = float(alpha), int(image_size)
        if image_file and noise_size:
            raise ConfigError("blend pattern: give image_file or noise_size, not both")
        cells = int(noise_size) if noise_size else size
        if not 1 <= cells <= size:
            raise ConfigError(
                f"blend noise_size must be in 1..{size} (the image size), got {cells}"
            )
        if image_file:
            self.pattern = resize_pattern(load_pattern(image_file), size, size)
        else:
            noise = torch.rand((1, 3, cells, cells), generator=seeded_generator(seed))
            self.pattern = F.interpolate(noise, size=(size, size), mode="nearest")[0]

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        pattern = resize_pattern(self.pattern, *images.shape[-2:]).to(images)
        return ((1 - self.alpha) * images + self.alpha * pattern).clamp(0, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern}
