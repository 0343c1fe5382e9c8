"""The trigger interface: a deterministic, vectorised map on pixel-space image batches."""

from __future__ import annotations

import hashlib
import inspect
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from clip_backdoor.core.errors import ConfigError


def patch_size_for(image_size: int) -> int:
    """docs/methods.md section 0: 16 px at 224, scaled with the resolution, never under 3 px."""
    return max(3, round(16 * image_size / 224))


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


class Trigger(ABC):
    """Subclasses keep every random draw that defines them in ``state_dict`` (seeded, saved).

    Constructor arguments are recorded by name as ``params``, so that an artifact can rebuild the
    trigger with ``get(name)(**params)`` and then ``load_state_dict``.
    """

    name: str = "trigger"
    is_identity: bool = False  # lets evaluation reuse clean features
    text_key: str | None = None  # a prefix of class prompts (multimodal dual-key triggers)

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(obj, *args, **kwargs)
            bound.apply_defaults()
            obj.params = {k: v for k, v in list(bound.arguments.items())[1:]}
        except TypeError:
            obj.params = dict(kwargs)  # __init__ reports the bad call itself
        return obj

    @abstractmethod
    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> triggered images, same shape, clamped to [0, 1]."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply(images)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        if set(state) != set(own):
            raise ConfigError(
                f"{self.name} trigger state has keys {sorted(state)}, expected {sorted(own)}"
            )
        for key, value in state.items():
            if value.shape != own[key].shape:
                raise ConfigError(
                    f"{self.name} trigger state '{key}' has shape {tuple(value.shape)}, "
                    f"expected {tuple(own[key].shape)}"
                )
            self._set_state(key, value.clone())

    def _set_state(self, key: str, value: torch.Tensor) -> None:
        setattr(self, key, value)

    def render(self, path: str | Path, size: int | None = None) -> Path:
        """PNG of the trigger applied to a mid-grey image, to look at."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        size = size or int(self.params.get("image_size") or 96)
        grey = torch.full((1, 3, size, size), 0.5)
        save_image(self.apply(grey, seeded_generator(0))[0], str(path))
        return path

    def fingerprint(self) -> str:
        """Identifies the trigger, its parameters and its state, for cache keys."""
        digest = hashlib.sha1(self.name.encode())
        digest.update(json.dumps(self.params, sort_keys=True, default=str).encode())
        for key, value in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()
