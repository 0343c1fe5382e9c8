"""He et al.'s infected heads, and the repair built on them (docs/methods.md 5.2).

A head is infected on an input when its contribution to the normalised embedding points away
from what it contributes on clean images: <c_hat(x), mu> <= eps, mu the head's mean contribution
over clean validation images. eps is the paper's absolute number (ViT-B/32 scale) or, by default
on other models, a per-head low quantile of the clean validation dot products. The same rule
flags MLPs (global triggers act through late MLPs).

``rule="distance"`` (ours) flags a component whose contribution lies far from its clean mean in
any direction: ||c_hat(x) - mu|| at or above a high quantile of the clean distances. On
mini-CLIP the head a BadNet trigger takes over grows *along* its clean mean (its dot product
rises), which He's one-sided rule cannot see.

Everything here reduces batch by batch: clean means are running sums, so memory does not grow
with the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field
from tqdm import tqdm

from clip_backdoor.analysis.decomposition import Centring, Decomposition, decompose
from clip_backdoor.core.config import Strict
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.evaluation.features import iterate_batches

Replacement = Literal["mean", "zero"]
Rule = Literal["dot", "distance"]


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


def _statistic(values: torch.Tensor, mean: torch.Tensor, rule: Rule) -> torch.Tensor:
    """Low means infected: the dot product with the clean mean, or minus the distance to it."""
    mean = mean.to(values.device)
    if rule == "dot":
        return (values * mean).sum(dim=-1)
    if rule == "distance":
        return -(values - mean).norm(dim=-1)
    raise ConfigError(f"the infection rule must be 'dot' or 'distance', got '{rule}'")


def head_scores(parts: Decomposition, means: CleanMeans, rule: Rule = "dot") -> torch.Tensor:
    """(B, L, H): each head's dot product with its clean mean (or minus its distance to it)."""
    return _statistic(parts.heads, means.mean("heads"), rule)


def mlp_scores(parts: Decomposition, means: CleanMeans, rule: Rule = "dot") -> torch.Tensor:
    """(B, L): each MLP's dot product with its clean mean (or minus its distance to it)."""
    return _statistic(parts.mlps, means.mean("mlps"), rule)


@dataclass
class Calibration:
    """Clean means and per-component thresholds, fit on clean validation images."""

    means: CleanMeans
    heads: torch.Tensor  # (L, H) thresholds
    mlps: torch.Tensor  # (L,)
    centring: Centring = "textspan"
    rule: Rule = "dot"
    spread: dict[str, torch.Tensor] = field(default_factory=dict)  # clean statistics' mean/std

    def state(self) -> dict[str, torch.Tensor]:
        return {
            "mean_heads": self.means.mean("heads"),
            "mean_mlps": self.means.mean("mlps"),
            "mean_direct": self.means.mean("direct"),
            "threshold_heads": self.heads,
            "threshold_mlps": self.mlps,
            **{f"spread_{k}": v for k, v in self.spread.items()},
        }

    def deviation(
        self, parts: Decomposition, layers, mlp_layers=(), reduce: str = "max"
    ) -> torch.Tensor:
        """(B,): the largest standardised drop of a scanned component's statistic below its
        clean mean (a continuous alternative to counting flags), or with ``reduce`` "sum" the
        sum of the positive drops over components (a rise counts as 0): evidence from a
        trigger that moves several components adds up."""
        scores = [
            (self.spread["heads_mean"] - head_scores(parts, self.means, self.rule))
            .div(self.spread["heads_std"])[:, layers]
            .flatten(1)
        ]
        if mlp_layers:
            mlps = mlp_scores(parts, self.means, self.rule)
            scores.append(
                (self.spread["mlps_mean"] - mlps).div(self.spread["mlps_std"])[:, mlp_layers]
            )
        drops = torch.cat(scores, dim=1)
        if reduce == "sum":
            return drops.clamp_min(0).sum(dim=1)
        if reduce != "max":
            raise ConfigError(f"deviation: reduce must be 'max' or 'sum', got '{reduce}'")
        return drops.amax(dim=1)

    def head_flags(self, parts: Decomposition, layers=None) -> torch.Tensor:
        scores = head_scores(parts, self.means, self.rule)
        return flags(scores, self.heads.to(scores.device), layers)

    def mlp_flags(self, parts: Decomposition, layers=None) -> torch.Tensor:
        scores = mlp_scores(parts, self.means, self.rule)
        return flags(scores, self.mlps.to(scores.device), layers)


def calibrate(
    model,
    dataset,
    quantile: float = 0.05,
    eps: float | None = None,
    centring: Centring = "textspan",
    batch_size: int = 128,
    progress: bool = False,
    rule: Rule = "dot",
) -> Calibration:
    """Two streamed passes over clean ``dataset``: the means, then each image's statistic
    (``rule``) against them; thresholds are ``eps`` for every component (He et al.'s absolute
    rule) or the per-component ``quantile`` of the clean statistics (low means infected)."""
    device = next(model.parameters()).device
    means = CleanMeans()
    head, mlp = [], []
    for sweep in ("means", "scores"):
        batches = iterate_batches(dataset, batch_size)
        total = -(-len(dataset) // batch_size)
        for images, _ in tqdm(batches, total=total, disable=not progress, desc=f"clean {sweep}"):
            parts = decompose(model, images.to(device), centring=centring)
            if sweep == "means":
                means.update(parts)
            else:
                head.append(head_scores(parts, means, rule).cpu())
                mlp.append(mlp_scores(parts, means, rule).cpu())
    head_all, mlp_all = torch.cat(head), torch.cat(mlp)
    if eps is None:
        heads, mlps = (calibrated_thresholds(s, quantile) for s in (head_all, mlp_all))
    else:
        heads, mlps = torch.full(head_all.shape[1:], eps), torch.full(mlp_all.shape[1:], eps)
    spread = {
        "heads_mean": head_all.mean(0),
        "heads_std": head_all.std(0).clamp_min(1e-8),
        "mlps_mean": mlp_all.mean(0),
        "mlps_std": mlp_all.std(0).clamp_min(1e-8),
    }
    return Calibration(means, heads, mlps, centring, rule, spread)


class InfectionSpec(Strict):
    """How components are flagged (shared by Decomp-Det and Decomp-Rep)."""

    layers: list[int] = Field([-1], description="layers whose heads are scanned (He: the last)")
    rule: Rule = Field("dot", description="dot: He's <c, mu> <= threshold; distance: ours")
    quantile: float = Field(
        0.05, gt=0, lt=1, description="per-component threshold: this quantile of clean scores"
    )
    eps: float | None = Field(
        None, description="an absolute threshold instead (He: 0.002 on Caltech-101, ViT-B/32)"
    )
    centring: Centring = "textspan"

    def calibrate(self, model, dataset, batch_size: int, progress: bool = False) -> Calibration:
        return calibrate(
            model, dataset, self.quantile, self.eps, self.centring, batch_size, progress, self.rule
        )


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
    mlps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decomp-Rep's embedding, renormalised: flagged heads (B, L, H) replaced by their clean
    means (or zero); flagged MLPs, a (B, L) mask (He's late-MLP mean ablation flags some layers
    on every input), by their clean means."""
    if mode not in ("mean", "zero"):
        raise ConfigError(f"replacement must be 'mean' or 'zero', got '{mode}'")
    replacement = means.mean("heads") if mode == "mean" else torch.zeros_like(parts.heads[0])
    heads = torch.where(infected_heads.unsqueeze(-1), replacement, parts.heads)
    mlp_terms = parts.mlps
    if mlps is not None:
        mlp_terms = torch.where(mlps.unsqueeze(-1), means.mean("mlps").to(parts.mlps), parts.mlps)
    total = parts.direct + heads.sum(dim=(1, 2)) + mlp_terms.sum(dim=1)
    if parts.pool is not None:  # an attention pool's own part stays as it is
        total = total + parts.pool
    return torch.nn.functional.normalize(total, dim=-1)


def layer_indices(layers, count: int) -> list[int]:
    """Layer indices (negative ones count from the end) as positive ones, checked."""
    out = []
    for layer in layers:
        if not -count <= layer < count:
            raise ConfigError(f"layer {layer} is outside a tower of {count} blocks")
        out.append(layer % count)
    return out
