"""Decomp-Det (He et al., docs/methods.md 5.2): count the heads a backdoor has taken over.

Each scanned head's contribution to the normalised embedding is compared with what it adds on
clean images (dot product with its clean mean); an input's score is the number of heads (and,
as our option, MLPs) at or below their threshold. It scores every layer too, to draw the heat
maps of where triggers act, but counts only the scanned ones (He: the last layer).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from clip_backdoor.analysis.decomposition import decompose
from clip_backdoor.analysis.head_heatmaps import flag_rate_figure
from clip_backdoor.analysis.infected_heads import InfectionSpec, layer_indices
from clip_backdoor.core.registry import DETECTORS
from clip_backdoor.detectors.base import Detector, DetectorSpec, ZeroShot


class DecompSpec(DetectorSpec, InfectionSpec):
    mlp_layers: list[int] = Field([], description="layers whose MLPs are counted too (ours)")
    score: Literal["count", "deviation", "deviation_sum"] = Field(
        "count",
        description="count: He's number of flagged components; deviation (ours): the largest "
        "standardised drop of a scanned component's statistic (continuous, so no ties); "
        "deviation_sum (ours): those drops summed over the scanned components",
    )


@DETECTORS.register("decomp_det")
class DecompDet(Detector):
    name = "decomp_det"
    spec_type = DecompSpec

    def fit(self, zero_shot: ZeroShot, clean: torch.Tensor, seed: int) -> None:
        super().fit(zero_shot, clean, seed)
        spec = self.spec
        clean_set = torch.utils.data.TensorDataset(clean, torch.zeros(len(clean)))
        self.calibration = spec.calibrate(zero_shot.model, clean_set, spec.batch_size)
        self.flag_sums: dict[str, dict] = {}

    def score(self, images: torch.Tensor, kind: str) -> torch.Tensor:
        parts = decompose(
            self.zero_shot.model, images.to(self.zero_shot.device), centring=self.spec.centring
        )
        heads, mlps = self.calibration.head_flags(parts), self.calibration.mlp_flags(parts)
        sums = self.flag_sums.setdefault(kind, {"heads": 0, "mlps": 0, "n": 0})
        sums["heads"] = sums["heads"] + heads.float().sum(0).cpu()
        sums["mlps"] = sums["mlps"] + mlps.float().sum(0).cpu()
        sums["n"] += len(images)
        layers = layer_indices(self.spec.layers, heads.shape[1])
        mlp_layers = layer_indices(self.spec.mlp_layers, heads.shape[1])
        if self.spec.score in ("deviation", "deviation_sum"):
            reduce = "sum" if self.spec.score == "deviation_sum" else "max"
            return self.calibration.deviation(parts, layers, mlp_layers, reduce)
        count = heads[:, layers].sum(dim=(1, 2))
        if mlp_layers:
            count = count + mlps[:, mlp_layers].sum(dim=1)
        return count.float()

    def report(self, ctx, label: str) -> dict:
        rates = {
            kind: {"heads": (s["heads"] / s["n"]).numpy(), "mlps": (s["mlps"] / s["n"]).numpy()}
            for kind, s in self.flag_sums.items()
            if kind != "validation"
        }
        trigger = ctx.trigger.name if ctx.trigger is not None else "?"
        spec = self.spec
        cut = f"eps {spec.eps:g}" if spec.eps is not None else f"{spec.quantile:g} clean quantile"
        flag_rate_figure(
            rates,
            ctx.run.path / "figures" / f"infected_{label}.png",
            f"trigger {trigger}: flagged by {spec.rule} ({cut})",
        )
        return {
            "flag_rates": {
                kind: {part: np.round(v, 4).tolist() for part, v in r.items()}
                for kind, r in rates.items()
            },
            "thresholds": {
                "heads": self.calibration.heads.tolist(),
                "mlps": self.calibration.mlps.tolist(),
            },
        }
