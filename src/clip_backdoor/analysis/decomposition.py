"""Exact decomposition of a ViT image embedding into heads, MLPs and the direct path (METHODS 5.1).

The last block's residual stream is the direct path r_0 (the first block's input) plus every
block's attention output and MLP output. Each attention output splits exactly into its heads
(and, under a class-token readout, each head into its source tokens); the tower's readout (final
LayerNorm, pooling, linear head; ``models.readout``) is distributed over the parts TextSpan's
way, so the parts sum to the normalised embedding that zero-shot classification uses:

    c_hat = head(pool([gamma * (c - mu / (K q)) / sigma + beta / (K q)])) / ||e||

with K = 2L + 1 intermediates (r_0, L attention layers, L MLPs), q the number of cells an
intermediate is split into (heads H, or tokens x heads N H), mu and sigma the LayerNorm's mean and
standard deviation of each token of r_L. ``centring="component"`` instead centres each part by its
own feature mean (equally exact; cleaner for mean replacement, but not He et al.'s scale).

The pool: the class token (open_clip ViT, EVA02, transformers CLIP), or an attention pool read
at its own weights (SigLIP, SigLIP2, PE-Core, transformers SigLIP): each part of every token goes
through each pool head's value and output projections, weighted by that head's attention to the
token; the pool's biases, its MLP term and the head's bias are the ``pool`` part (the MLP reads
the pooled vector whole, so it is the pool's own, as each block's MLP is the block's).

Why here and not in the reference's way: one batch at a time, nothing kept across batches (the
reference stacks every layer of every image: ~30 GB for ImageNet); callers reduce on the fly.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.models.image_tower import ImageTower

Centring = Literal["textspan", "component"]


@dataclass
class Decomposition:
    """Parts of the normalised embeddings of a batch; ``total()`` is ``encode_image``'s output."""

    direct: torch.Tensor  # (B, D): the first block's input
    heads: torch.Tensor  # (B, L, H, D): each head of each layer, summed over source tokens
    mlps: torch.Tensor  # (B, L, D)
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, N, H, D)
    pool: torch.Tensor | None = None  # (B, D): what the readout adds itself (attention pools)

    def layers(self) -> torch.Tensor:
        """(B, L, D): each attention layer's term (its heads summed)."""
        return self.heads.sum(dim=2)

    def total(self) -> torch.Tensor:
        total = self.direct + self.heads.sum(dim=(1, 2)) + self.mlps.sum(dim=1)
        return total if self.pool is None else total + self.pool


def check_decomposable(tower: ImageTower) -> None:
    """A one-line error for what the exact decomposition cannot express, before any work."""
    tower.check_decomposable()


def decomposable_tower(model: nn.Module) -> ImageTower:
    """The model's tower, or a one-line error before any work if it cannot be decomposed."""
    tower = ImageTower.of(model)
    check_decomposable(tower)
    return tower


class _Projector:
    """Distributes the tower's readout over parts of the last block's residual stream."""

    def __init__(self, tower: ImageTower, final: torch.Tensor, count: int, centring: Centring):
        self.readout = readout = tower.readout(final)
        self.count, self.centring = count, centring
        ln = readout.norm
        read = final if readout.index is None else final[:, readout.index]
        self.mu = read.mean(dim=-1)
        self.sigma = (read.var(dim=-1, unbiased=False) + ln.eps).sqrt()
        self.gamma = ln.weight.float() if ln.weight is not None else torch.ones_like(read[0, 0])
        self.beta = ln.bias.float() if ln.bias is not None else torch.zeros_like(read[0, 0])
        self.norm = tower.pool(final).norm(dim=-1)

    def __call__(self, c: torch.Tensor, cells: int) -> torch.Tensor:
        """c: (B, *cells, d) at the token a class-token readout reads, else (B, T, *cells, d)
        at every token -> (B, *cells, D) on the unit-norm scale."""
        readout = self.readout
        share = self.count * cells
        shape = self.mu.shape + (1,) * (c.dim() - self.mu.dim())
        mu, sigma = self.mu.view(shape), self.sigma.view(shape)
        centre = c.mean(dim=-1, keepdim=True) if self.centring == "component" else mu / share
        normed = self.gamma * (c - centre) / sigma + self.beta / share
        if readout.index is None:  # pool: weight the tokens per pool head, then its projections
            pooled = torch.einsum("bgt,bt...d->bg...d", readout.weights.float(), normed)
            if readout.values is None:
                pooled = pooled.sum(dim=1)
            else:
                pooled = torch.einsum("bg...d,gpd->b...p", pooled, readout.values.float())
        else:
            pooled = normed
        out = readout.head_of(pooled)
        return out / self.norm.view((-1,) + (1,) * (out.dim() - 1))

    def pool_part(self, like: torch.Tensor) -> torch.Tensor | None:
        """What the readout adds itself (an attention pool's biases and MLP, a head's bias)."""
        readout = self.readout
        if readout.head_bias is None and readout.constant is None:
            return None
        return readout.pool_part(like.float()) / self.norm[:, None]


@torch.no_grad()
def decompose(
    model: nn.Module,
    images: torch.Tensor,
    token_layers: Collection[int] = (),
    centring: Centring = "textspan",
) -> Decomposition:
    """Decompose the embeddings of ``images`` (pixels in [0, 1] at model resolution).

    ``token_layers``: layers whose heads are also split by source token (memory B x N x H x D
    each, so only on request; class-token readouts only). Two passes: the plain forward gives
    the readout's statistics, the hooked one the parts, each reduced as soon as it is seen.
    """
    if getattr(model, "visual_prompts", None) is not None:
        raise ConfigError("a tower with visual prompts is not decomposable (decompose its base)")
    tower = decomposable_tower(model)
    if centring not in ("textspan", "component"):
        raise ConfigError(f"centring must be 'textspan' or 'component', got '{centring}'")
    layers = tower.layers
    for layer in token_layers:
        if not 0 <= layer < layers:
            raise ConfigError(f"token layer {layer} is outside a tower of {layers} blocks")
    normalize = getattr(model, "normalize", None)
    x = (normalize(images) if normalize is not None else images).float()
    blocks = tower.blocks
    with torch.autocast(x.device.type, enabled=False):  # exact means fp32, even inside autocast
        project = _Projector(tower, tower.forward(x, tokens=True), 2 * layers + 1, centring)
        index = project.readout.index
        if token_layers and index is None:
            raise ConfigError(
                f"splitting heads by source token needs a class-token readout; "
                f"{type(tower).__name__}'s attention pool reads every token"
            )
        direct: list[torch.Tensor] = []
        heads: list[torch.Tensor] = [None] * layers  # type: ignore[list-item]
        mlps: list[torch.Tensor] = [None] * layers  # type: ignore[list-item]
        tokens: dict[int, torch.Tensor] = {}
        read: dict[int, torch.Tensor] = {}

        def at(value: torch.Tensor) -> torch.Tensor:
            """The token a class-token readout reads, taken before any per-token work."""
            return value.float() if index is None else value[:, index].float()

        def hook(layer: int, site: str, value: torch.Tensor) -> None:
            block = blocks[layer]
            if site == "resid_pre" and layer == 0:
                direct.append(project(at(value), 1))
            elif site == "attn_weights" and layer in token_layers:
                read[layer] = value[:, :, index]  # (B, H, N): the class token's attention
            elif site == "attn_values" and layer in token_layers:
                terms = read[layer].transpose(1, 2).unsqueeze(-1) * value.float()  # (B, N, H, d)
                bias = tower.attn_bias(block).float() / (terms.shape[1] * terms.shape[2])
                scaled = tower.attn_scale(block, terms + bias)
                tokens[layer] = project(scaled, terms.shape[1] * terms.shape[2])
            elif site == "attn_heads":
                count = value.shape[2]
                scaled = tower.attn_scale(block, at(value) + tower.attn_bias(block).float() / count)
                heads[layer] = project(scaled, count)
            elif site == "mlp":
                mlps[layer] = project(at(value), 1)

        sites = ["resid_pre", "attn_heads", "mlp"]
        sites += ["attn_weights", "attn_values"] if token_layers else []
        tower.forward(x, hook=hook, sites=sites)
        missing = set(token_layers) - set(tokens)
        if missing:
            raise ConfigError(
                f"splitting heads by source token is not available on {type(tower).__name__} "
                "towers (a norm inside attention mixes the heads' values)"
            )
        return Decomposition(
            direct=direct[0],
            heads=torch.stack(heads, 1),
            mlps=torch.stack(mlps, 1),
            tokens=dict(sorted(tokens.items())),
            pool=project.pool_part(direct[0]),
        )
