"""SCALE-UP (docs/methods.md 6.2): a triggered input keeps its prediction when its pixels are
amplified, a clean one does not. Score = the fraction of scales whose prediction matches the
unscaled one (SPC), computed in pixel space, where the reference's scaling of normalised
tensors would be wrong.
"""

from __future__ import annotations

import torch
from pydantic import Field

from clip_backdoor.core.registry import DETECTORS
from clip_backdoor.detectors.base import Detector, DetectorSpec, ZeroShot


class ScaleUpSpec(DetectorSpec):
    scales: list[float] = Field(
        [3, 5, 7, 9, 11], min_length=1, description="pixel multipliers (BackdoorBox's default)"
    )
    standardise: bool = Field(
        False,
        description="the data-limited variant: SPC standardised by its clean-validation mean and"
        " std (a monotone map: AUROC is unchanged, thresholds read in std units)",
    )


@DETECTORS.register("scale_up")
class ScaleUp(Detector):
    name = "scale_up"
    spec_type = ScaleUpSpec

    def fit(self, zero_shot: ZeroShot, clean: torch.Tensor, seed: int) -> None:
        super().fit(zero_shot, clean, seed)
        self.centre, self.spread = 0.0, 1.0
        if self.spec.standardise:
            spc = self.consistency(clean)
            self.centre, self.spread = spc.mean().item(), max(spc.std().item(), 1e-6)

    def consistency(self, images: torch.Tensor) -> torch.Tensor:
        base = self.zero_shot.predict(images)
        scaled = torch.cat([(n * images).clamp(0, 1) for n in self.spec.scales])
        predictions = self.zero_shot.predict(scaled).view(len(self.spec.scales), len(images))
        return (predictions == base).float().mean(dim=0)

    def score(self, images: torch.Tensor, kind: str) -> torch.Tensor:
        return (self.consistency(images) - self.centre) / self.spread
