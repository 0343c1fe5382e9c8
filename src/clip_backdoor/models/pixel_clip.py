"""A CLIP that takes pixel-space images in [0, 1]; normalisation happens inside.

Why: triggers, perturbations and optimised patches must act on real images and stay valid
(clamped to [0, 1]). Keeping mean/std inside the model means no attack or defense ever has to
know a model's normalisation.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import image_transform
from torch import nn

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.models.text_tower import TextTower


class PixelCLIP(nn.Module):
    """Wraps an open_clip CLIP; ``encode_image`` takes (B, 3, H, W) floats in [0, 1]."""

    def __init__(
        self,
        clip: nn.Module,
        model_cfg: dict,
        preprocess_cfg: dict | None = None,
        name: str = "clip",
    ) -> None:
        super().__init__()
        self.clip = clip
        self.name = name
        self.fewshot_pool = None  # images its pretraining never saw (``data/fewshot_pool.py``)
        self.tokenizer = None  # the family's own (set by ``load_clip``; saved beside the weights)
        self.model_cfg = copy.deepcopy(model_cfg)
        cfg = dict(preprocess_cfg or {})
        cfg.setdefault("mean", list(OPENAI_DATASET_MEAN))
        cfg.setdefault("std", list(OPENAI_DATASET_STD))
        cfg.setdefault("interpolation", "bicubic")
        cfg.setdefault("resize_mode", "shortest")
        cfg["size"] = self.image_size
        self.preprocess_cfg = cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)

    def share(self, base: PixelCLIP) -> None:
        """Become a wrapper of ``base``: the same CLIP (shared, not copied), name and
        preprocessing; for models that change only how an image is encoded."""
        nn.Module.__init__(self)
        self.clip, self.name, self.model_cfg = base.clip, base.name, base.model_cfg
        self.fewshot_pool = base.fewshot_pool
        self.tokenizer = base.tokenizer
        self.preprocess_cfg = base.preprocess_cfg
        self.register_buffer("mean", base.mean, persistent=False)
        self.register_buffer("std", base.std, persistent=False)

    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, Sequence) else size)

    @property
    def context_length(self) -> int:
        return int(self.model_cfg["text_cfg"].get("context_length", 77))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's learnt bias of the pair logits (None for CLIP families)."""
        return getattr(self.clip, "logit_bias", None)

    @property
    def family(self) -> str:
        from clip_backdoor.models.families import family_of

        return family_of(self.model_cfg)

    @property
    def objective(self) -> str:
        """The loss the family was trained with: 'sigmoid' (SigLIP: a logit bias) or 'infonce'."""
        return self.model_cfg.get("objective") or (
            "sigmoid" if self.logit_bias is not None else "infonce"
        )

    def tower_of(self, name: str) -> str:
        """'image', 'text' or 'head' (temperature, bias) for a parameter name of ``clip``."""
        if name in ("logit_scale", "logit_bias"):
            return "head"
        return "image" if name.startswith("visual.") else "text"

    def fingerprint_state(self) -> dict[str, torch.Tensor]:
        """The tensors that decide what this model computes (hashed as its cache key)."""
        return self.clip.state_dict()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.clip.encode_image(self.normalize(images))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = encode_text_trimmed(self.clip, tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """Normalised image and text features and the logit scale, like open_clip's CLIP."""
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp()

    def pixel_transform(self):
        """PIL image -> float tensor in [0, 1] at the model's resolution (no normalisation)."""
        return pixel_transform(self.image_size, self.preprocess_cfg)


def encode_text_trimmed(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` run over the tokens up to the longest caption's end only.

    Why: captions fill a fraction of the context (mini-CLIP: ~15 of 32 tokens), and under the
    causal mask the padding after the pooled token cannot change it, so cutting it is exact and
    saves most of the text tower's time. Other text towers take open_clip's own path.
    """
    try:
        tower = TextTower.of(clip)
    except ConfigError:
        return clip.encode_text(tokens)
    if type(tower) is not TextTower:  # transformers' towers: their own forward
        return clip.encode_text(tokens)
    exact = tower.causal and tower.pool_type in ("argmax", "eos")
    if not exact or tokens.shape[1] != tower.context_length:
        return clip.encode_text(tokens)
    return tower.encode_tokens(tokens)


def pixel_transform(image_size: int, preprocess_cfg: dict | None = None):
    """open_clip's evaluation transform with the normalisation removed (mean 0, std 1)."""
    cfg = preprocess_cfg or {}
    return image_transform(
        image_size,
        is_train=False,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        resize_mode=cfg.get("resize_mode", "shortest"),
        interpolation=cfg.get("interpolation", "bicubic"),
    )
