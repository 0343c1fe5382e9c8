"""WaNet: a fixed smooth warp of the image grid (docs/methods.md 1.4), two presets.

``wanet`` is the paper's (k=4, s=0.5, with "noise" samples that keep their clean caption);
``wanet_clipref`` is the CLIP references' (k = image size, s=1, no noise mode), whose per-pixel
grid is a sub-pixel jitter rather than a warp. The k x k grid is the saved state, so the warp is
the same at any resolution it is applied at.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers.base import Trigger, seeded_generator


@TRIGGERS.register("wanet")
class WaNet(Trigger):
    name = "wanet"

    def __init__(
        self,
        *,
        image_size: int = 224,
        k: int | None = 4,
        s: float = 0.5,
        grid_rescale: float = 1.0,
        cross_ratio: float = 2.0,
        seed: int = 0,
    ) -> None:
        k = int(k) if k else int(image_size)
        if k < 2 or s <= 0 or cross_ratio < 0:
            raise ConfigError("WaNet needs k >= 2, s > 0 and cross_ratio >= 0")
        self.k, self.s, self.grid_rescale = k, float(s), float(grid_rescale)
        self.cross_ratio = float(cross_ratio)
        grid = torch.rand((2, k, k), generator=seeded_generator(seed)) * 2 - 1
        self.grid = grid / grid.abs().mean()

    def _warp_field(self, height: int, device, dtype) -> torch.Tensor:
        """docs/methods.md 1.4's grid as (1, H, W, 2): identity plus the scaled, upsampled flow."""
        flow = F.interpolate(
            self.grid[None], size=(height, height), mode="bicubic", align_corners=True
        )
        flow = flow.permute(0, 2, 3, 1).to(device, dtype)
        line = torch.linspace(-1, 1, height, device=device, dtype=dtype)
        rows, cols = torch.meshgrid(line, line, indexing="ij")
        identity = torch.stack((cols, rows), dim=-1)[None]  # (x = column, y = row)
        return ((identity + self.s * flow / height) * self.grid_rescale).clamp(-1, 1)

    def _check_square(self, images: torch.Tensor) -> int:
        h, w = images.shape[-2:]
        if h != w:
            raise ConfigError(f"WaNet warps square images, got {h}x{w}")
        return h

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h = self._check_square(images)
        field = self._warp_field(h, images.device, images.dtype).expand(len(images), -1, -1, -1)
        warped = F.grid_sample(images, field, mode="bilinear", align_corners=True)
        return warped.clamp(0, 1)

    def apply_noise(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The "cross" samples: the warp plus fresh random jitter; they keep clean captions."""
        h = self._check_square(images)
        field = self._warp_field(h, images.device, images.dtype)
        jitter = torch.rand((len(images), h, h, 2), generator=generator) * 2 - 1
        field = (field + jitter.to(images) / h).clamp(-1, 1)
        return F.grid_sample(images, field, mode="bilinear", align_corners=True).clamp(0, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"grid": self.grid}


@TRIGGERS.register("wanet_clipref")
class WaNetClipRef(WaNet):
    """The CLIP references' preset: k = image size, s = 1, no noise samples."""

    name = "wanet_clipref"

    def __init__(
        self, *, image_size: int = 224, s: float = 1.0, grid_rescale: float = 1.0, seed: int = 0
    ) -> None:
        super().__init__(
            image_size=image_size,
            k=None,
            s=s,
            grid_rescale=grid_rescale,
            cross_ratio=0.0,
            seed=seed,
        )
