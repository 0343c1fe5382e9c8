"""The trigger interface: a deterministic, vectorised map on pixel-space image batches."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torchvision.utils import save_image


class Trigger(ABC):
    """Subclasses keep every random draw that defines them in ``state_dict`` (seeded, saved)."""

    name: str = "trigger"
    is_identity: bool = False  # lets evaluation reuse clean features

    @abstractmethod
    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> triggered images, same shape, clamped to [0, 1]."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply(images)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise KeyError(f"{self.name} has no state, got {sorted(state)}")

    def render(self, path: str | Path, size: int = 96) -> Path:
        """PNG of the trigger applied to a mid-grey image, to look at."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(self.apply(torch.full((1, 3, size, size), 0.5))[0], str(path))
        return path

    def fingerprint(self) -> str:
        """Identifies the trigger and its state, for feature-cache keys."""
        digest = hashlib.sha1(self.name.encode())
        for key, value in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()
