"""STRIP (docs/methods.md 6.1): a triggered input keeps its (target) prediction when blended with
clean images, so the entropy of the blends' predictions is low.

Unlike the reference, each input gets its own seeded draw of clean images (BackdoorBench shares
one unseeded draw across the batch). Blending is in pixel space and clipped by default;
``additive`` is BackdoorBench's unclipped x + alpha * x_j on normalised tensors.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from clip_backdoor.core.registry import DETECTORS
from clip_backdoor.detectors.base import Detector, DetectorSpec, ZeroShot


class StripSpec(DetectorSpec):
    blends: int = Field(100, ge=1, description="clean images blended with each input (N)")
    alpha: float = Field(0.5, gt=0, le=1, description="weight of the clean image")
    blend: Literal["pixel", "additive"] = "pixel"


@DETECTORS.register("strip")
class Strip(Detector):
    name = "strip"
    spec_type = StripSpec

    def fit(self, zero_shot: ZeroShot, clean: torch.Tensor, seed: int) -> None:
        super().fit(zero_shot, clean, seed)
        self.pool = clean
        self.generator = torch.Generator().manual_seed(seed)

    def blended(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W): ``image`` blended with N clean images of its own draw."""
        spec = self.spec
        picks = torch.randint(len(self.pool), (spec.blends,), generator=self.generator)
        others = self.pool[picks]
        if spec.blend == "pixel":
            return ((1 - spec.alpha) * image + spec.alpha * others).clamp(0, 1)
        mean = self.zero_shot.model.mean.to(image.dtype)  # x + a x_j on normalised tensors
        return image + spec.alpha * (others - mean)

    def score(self, images: torch.Tensor, kind: str) -> torch.Tensor:
        scale = self.zero_shot.model.logit_scale.exp().item()
        scores = []
        for image in images:
            logits = self.zero_shot.logits(self.blended(image)) * scale
            p = logits.softmax(dim=1)
            entropy = -(p * p.clamp_min(1e-12).log()).sum(dim=1).mean()
            scores.append(-entropy)  # low entropy: likely triggered
        return torch.stack(scores)
