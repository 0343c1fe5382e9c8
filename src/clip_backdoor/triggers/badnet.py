"""BadNet: one fixed, seeded noise patch stamped on the image (docs/methods.md 1.1).

The reference CLIP code redraws the noise for every image with no seed; here the patch is drawn
once from ``seed`` and saved, so a backdoor and its evaluation use the same pattern.
"""

from __future__ import annotations

from typing import Literal

import torch

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers.base import Trigger, patch_size_for, seeded_generator
from clip_backdoor.triggers.paste import check_fits, paste, positions

COLOURS = {"yellow": (1.0, 1.0, 0.0), "white": (1.0, 1.0, 1.0)}


class PatchTrigger(Trigger):
    """A square patch (state ``patch``, 3 x p x p in [0, 1]) pasted at a placement rule."""

    position: str = "random"

    def __init__(self, *, image_size: int = 224, size: int | None = None, position: str = "random"):
        self.image_size = int(image_size)
        self.size = int(size) if size else patch_size_for(self.image_size)
        if self.size < 1:
            raise ConfigError(f"patch size must be at least 1 px, got {self.size}")
        check_fits(self.size, self.image_size, self.image_size, f"{self.name} patch")
        positions(1, self.size, self.image_size, self.image_size, position, None)  # validates
        self.position = position
        self.patch = torch.full((3, self.size, self.size), 0.5)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, h, w = images.shape
        rows, cols = positions(b, self.size, h, w, self.position, generator)
        return paste(images, self.patch.clamp(0, 1), rows, cols)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"patch": self.patch}

    def _set_state(self, key: str, value: torch.Tensor) -> None:
        self.patch = value.float().clamp(0, 1)


@TRIGGERS.register("badnet")
class BadNet(PatchTrigger):
    name = "badnet"

    def __init__(
        self,
        *,
        image_size: int = 224,
        size: int | None = None,
        position: str = "random",
        pattern: Literal["noise", "yellow", "white"] = "noise",
        seed: int = 0,
    ) -> None:
        super().__init__(image_size=image_size, size=size, position=position)
        if pattern == "noise":
            self.patch = torch.rand((3, self.size, self.size), generator=seeded_generator(seed))
        elif pattern in COLOURS:
            colour = torch.tensor(COLOURS[pattern]).view(3, 1, 1)
            self.patch = colour.expand(3, self.size, self.size).clone()
        else:
            raise ConfigError(f"unknown BadNet pattern '{pattern}' (choose noise, yellow, white)")
