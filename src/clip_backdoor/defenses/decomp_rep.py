"""Decomp-Rep (He et al., docs/methods.md 5.2): repair at inference time, no training.

The image embedding is rebuilt from its exact decomposition with the heads a trigger has taken
over replaced by what they contribute on clean images (their clean means). Options: zero
instead of the mean, a fixed or random set of heads instead of the detected ones (controls),
and He's late-MLP mean ablation for global triggers (the MLPs of the given layers replaced by
their clean means for every input, detected or not). The result is a wrapped model that the
ordinary evaluation uses unchanged; its cache key includes the calibration and the options.

``site: embedding`` is He's repair: only the component's direct term in the final embedding is
replaced, which removes a last-layer head's whole effect. ``site: stream`` (ours) replaces the
head's (or MLP's) output inside the forward pass by its clean per-token mean, so later blocks
read the clean value too: a head in an early block (mini-CLIP's BadNet head sits in block 1 of
4) acts mostly through the blocks after it, which the embedding-only repair leaves in place.
"""

from __future__ import annotations

import json
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import save_file

from clip_backdoor.analysis.decomposition import decomposable_tower, decompose
from clip_backdoor.analysis.infected_heads import (
    Calibration,
    InfectionSpec,
    Replacement,
    layer_indices,
    repaired,
)
from clip_backdoor.core.config import validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import DEFENSES
from clip_backdoor.evaluation.features import iterate_batches
from clip_backdoor.models.image_tower import ImageTower
from clip_backdoor.models.pixel_clip import PixelCLIP
from clip_backdoor.stages import StageOutput


class DecompRepSpec(InfectionSpec):
    heads: Literal["detected", "fixed", "random", "none"] = Field(
        "detected",
        description="which heads are replaced: those flagged on each input, a fixed set, a "
        "seeded random set of `count` heads of the scanned layers, or none (MLP ablation only)",
    )
    fixed: list[tuple[int, int]] = Field([], description="(layer, head) pairs for heads: fixed")
    count: int = Field(1, ge=1, description="heads replaced for heads: random")
    replace: Replacement = "mean"
    mlp_layers: list[int] = Field(
        [], description="MLPs replaced by their clean means on every input (late-MLP ablation)"
    )
    detect_mlps: list[int] = Field(
        [],
        description="MLPs scanned like the heads and replaced on the inputs where they are "
        "flagged (the dual-embedding patch also moves block 0's MLP)",
    )
    site: Literal["embedding", "stream"] = Field(
        "embedding",
        description="replace the direct term in the embedding (He) or the output inside the "
        "forward pass, so later blocks see the clean value too (ours)",
    )
    batch_size: int = Field(128, ge=1)


class RepairedCLIP(PixelCLIP):
    """A PixelCLIP whose image embedding is Decomp-Rep's; the CLIP itself is shared, unchanged."""

    def __init__(
        self,
        base: PixelCLIP,
        calibration: Calibration,
        spec: DecompRepSpec,
        seed: int,
        stream: dict[str, torch.Tensor] | None = None,
    ):
        self.share(base)
        self.base, self.calibration, self.spec = base, calibration, spec
        self.stream = stream or {}  # site: "heads" (L, T, H, d) and "mlps" (L, T, d) means
        if spec.site == "stream" and not self.stream:
            raise ConfigError("decomp_rep: site 'stream' needs the clean stream means")
        layers, heads = calibration.heads.shape
        self.layers = layer_indices(spec.layers, layers)
        self.mlp_layers = layer_indices(spec.mlp_layers, layers)
        self.detect_mlps = layer_indices(spec.detect_mlps, layers)
        self.fixed = torch.zeros(layers, heads, dtype=torch.bool)
        if spec.heads == "fixed":
            if not spec.fixed:
                raise ConfigError("decomp_rep: heads 'fixed' needs a list of (layer, head) pairs")
            for layer, head in spec.fixed:
                if not 0 <= head < heads:
                    raise ConfigError(f"decomp_rep: head {head} is outside a layer of {heads}")
                self.fixed[layer_indices([layer], layers)[0], head] = True
        elif spec.heads == "random":
            pool = [(layer, head) for layer in self.layers for head in range(heads)]
            if spec.count > len(pool):
                raise ConfigError(f"decomp_rep: {spec.count} random heads of {len(pool)} scanned")
            order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
            for index in order[: spec.count].tolist():
                self.fixed[pool[index]] = True

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        parts = decompose(self.base, images, centring=self.spec.centring)
        if self.spec.heads == "detected":
            infected = self.calibration.head_flags(parts, self.layers)
        else:
            infected = self.fixed.to(images.device).expand(len(images), -1, -1)
        mlps = torch.zeros(infected.shape[:2], dtype=torch.bool, device=infected.device)
        mlps[:, self.mlp_layers] = True
        if self.detect_mlps:
            mlps |= self.calibration.mlp_flags(parts, self.detect_mlps).to(mlps.device)
        if self.spec.site == "stream":
            return self._stream_repaired(images, infected, mlps, normalize)
        # renormalised whatever ``normalize`` says: the parts live on the unit-norm scale
        return repaired(parts, self.calibration.means, infected, self.spec.replace, mlps)

    def _stream_repaired(
        self, images: torch.Tensor, infected: torch.Tensor, mlps: torch.Tensor, normalize: bool
    ) -> torch.Tensor:
        """The forward pass again, flagged heads' and MLPs' outputs (B, L, H) and (B, L) swapped
        for their clean per-token means (or zero, heads only) on the inputs where they are
        flagged."""
        zero = self.spec.replace == "zero"

        def hook(layer: int, site: str, value: torch.Tensor) -> torch.Tensor | None:
            if site == "attn_heads":
                mask = infected[:, layer].view(len(value), 1, -1, 1)
                if not mask.any():
                    return None
                mean = self.stream["heads"][layer].to(value)
                return torch.where(mask, torch.zeros_like(mean) if zero else mean, value)
            mask = mlps[:, layer].view(len(value), 1, 1)  # the "mlp" site
            if not mask.any():
                return None
            return torch.where(mask, self.stream["mlps"][layer].to(value), value)

        tower = ImageTower.of(self.base)
        features = tower.forward(self.normalize(images), hook=hook, sites=("attn_heads", "mlp"))
        return F.normalize(features, dim=-1) if normalize else features

    def repair_state(self) -> dict[str, torch.Tensor]:
        """What decides the repair beyond the CLIP's weights (saved and hashed)."""
        state = dict(self.calibration.state())
        state.update({f"stream_{k}": v for k, v in self.stream.items()})
        return state

    def fingerprint_state(self) -> dict[str, torch.Tensor]:
        state = super().fingerprint_state()
        state.update({f"decomp_rep.{k}": v for k, v in self.repair_state().items()})
        options = json.dumps(self.spec.model_dump(), sort_keys=True).encode()
        state["decomp_rep.options"] = torch.frombuffer(bytearray(options), dtype=torch.uint8)
        state["decomp_rep.fixed"] = self.fixed
        return state


@DEFENSES.register("decomp_rep")
class DecompRep:
    needs_validation = True  # the clean means and thresholds come from held-out clean images

    def __init__(self, **params) -> None:
        self.spec = validate(DecompRepSpec, params, "defense decomp_rep")

    def run(self, ctx) -> StageOutput:
        spec, model = self.spec, ctx.model
        if isinstance(model, RepairedCLIP):
            model = model.base  # a repair of a repair starts from the same decomposition
        decomposable_tower(model)  # a one-line error for towers it cannot split, before any work
        calibration = spec.calibrate(model, ctx.validation, spec.batch_size, ctx.progress)
        stream = (
            stream_means(model, ctx.validation, spec.batch_size) if spec.site == "stream" else None
        )
        repaired = RepairedCLIP(model, calibration, spec, ctx.recipe.seed, stream)
        folder = ctx.run.path / "artifacts" / (ctx.label or "decomp_rep")
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in repaired.repair_state().items()},
            str(folder / "calibration.safetensors"),
        )
        info = {**spec.model_dump(), "validation_images": len(ctx.validation)}
        (folder / "decomp_rep.json").write_text(json.dumps(info, indent=2) + "\n")
        replaced = repaired.fixed.nonzero().tolist() if spec.heads in ("fixed", "random") else []
        ctx.log(f"decomp_rep: calibrated on {len(ctx.validation)} clean validation images")
        metrics = {"validation_images": len(ctx.validation), "replaced_heads": replaced}
        return StageOutput(metrics, ctx.state.but(model=repaired))


@torch.no_grad()
def stream_means(model: PixelCLIP, dataset, batch_size: int) -> dict[str, torch.Tensor]:
    """Per-token clean means of every head's output (L, T, H, d) and every MLP's (L, T, d)."""
    tower = ImageTower.of(model)
    sums: dict[str, list] = {"attn_heads": [0] * tower.layers, "mlp": [0] * tower.layers}
    count = 0

    def hook(layer: int, site: str, value: torch.Tensor) -> None:
        sums[site][layer] = sums[site][layer] + value.double().sum(dim=0)

    device = next(model.parameters()).device
    for images, _ in iterate_batches(dataset, batch_size):
        with torch.autocast(device.type, enabled=False):
            tower.forward(model.normalize(images.to(device).float()), hook=hook, sites=tuple(sums))
        count += len(images)
    return {
        "heads": torch.stack(sums["attn_heads"]).div(count).float(),
        "mlps": torch.stack(sums["mlp"]).div(count).float(),
    }
