"""He et al.'s infected heads, and the repair built on them (METHODS.md 5.2).

A head is infected on an input when its contribution to the normalised embedding points away
from what it contributes on clean images: <c_hat(x), mu> <= eps, mu the head's mean contribution
over clean validation images. eps is the paper's absolute number (ViT-B/32 scale) or, by default
on other models, a per-head low quantile of the clean validation dot products. The same rule
flags MLPs (global triggers act through late MLPs).

Everything here reduces batch by batch: clean means are running sums, so memory does not grow
with the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from clip_backdoor.analysis.decomposition import Decomposition
from clip_backdoor.errors import ConfigError

Replacement = Literal["mean", "zero"]


@dataclass
class CleanMeans:
    """Running means of every part over clean images (update with one batch at a time)."""

    count: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def update(self, parts: Decomposition) -> None:
        batch = {"direct": parts.direct, "heads": parts.heads, "mlps": parts.mlps}
        for name, value in batch.items():
            total = value.sum(dim=0).double()
            self.sums[name] = self.sums[name] + total if name in self.sums else total
        self.count += parts.direct.shape[0]

    def mean(self, name: str) -> torch.Tensor:
        if not self.count:
            raise ConfigError("clean means of zero images: give clean validation images first")
        return (self.sums[name] / self.count).float()


def head_scores(parts: Decomposition, means: CleanMeans) -> torch.Tensor:
    """(B, L, H): each head's dot product with its clean mean."""
    return (parts.heads * means.mean("heads")).sum(dim=-1)


def mlp_scores(parts: Decomposition, means: CleanMeans) -> torch.Tensor:
    """(B, L): each MLP's dot product with its clean mean."""
    return (parts.mlps * means.mean("mlps")).sum(dim=-1)


def calibrated_thresholds(clean_scores: torch.Tensor, quantile: float) -> torch.Tensor:
    """Per-component thresholds: the ``quantile`` of clean validation scores (N, ...) -> (...)."""
    if not 0 < quantile < 1:
        raise ConfigError(f"the calibration quantile must be in (0, 1), got {quantile}")
    if clean_scores.shape[0] < 2:
        raise ConfigError("calibrating thresholds needs at least 2 clean validation images")
    return torch.quantile(clean_scores.double(), quantile, dim=0).float()


def flags(scores: torch.Tensor, thresholds: torch.Tensor | float, layers=None) -> torch.Tensor:
    """Infected (score <= threshold) per input and component; only ``layers`` (indices into
    axis 1; None: all) can be flagged."""
    flagged = scores <= thresholds
    if layers is not None:
        keep = torch.zeros(scores.shape[1], dtype=torch.bool)
        for layer in layers:
            if not -scores.shape[1] <= layer < scores.shape[1]:
                raise ConfigError(f"layer {layer} is outside a tower of {scores.shape[1]} blocks")
            keep[layer] = True
        flagged = flagged & keep.view(1, -1, *([1] * (scores.dim() - 2)))
    return flagged


def repaired(
    parts: Decomposition,
    means: CleanMeans,
    infected_heads: torch.Tensor,
    mode: Replacement = "mean",
    mlp_layers=(),
) -> torch.Tensor:
    """Decomp-Rep's embedding, renormalised: flagged heads (B, L, H) replaced by their clean
    means (or zero); the MLPs of ``mlp_layers`` replaced by their clean means for every input
    (He's late-MLP mean ablation for global triggers)."""
    if mode not in ("mean", "zero"):
        raise ConfigError(f"replacement must be 'mean' or 'zero', got '{mode}'")
    replacement = means.mean("heads") if mode == "mean" else torch.zeros_like(parts.heads[0])
    heads = torch.where(infected_heads.unsqueeze(-1), replacement, parts.heads)
    mlps = parts.mlps.clone()
    for layer in mlp_layers:
        mlps[:, layer] = means.mean("mlps")[layer]
    total = parts.direct + heads.sum(dim=(1, 2)) + mlps.sum(dim=1)
    return torch.nn.functional.normalize(total, dim=-1)
