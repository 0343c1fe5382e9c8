"""Exact decomposition of a ViT image embedding into heads, MLPs and the direct path (METHODS 5.1).

The CLS token's final residual stream is the direct path r_0 (after ln_pre) plus every block's
attention output and MLP output. Each attention output splits exactly into its heads (and each
head into its source tokens); the final LayerNorm and projection are distributed over the parts
TextSpan's way, so the parts sum to the normalised embedding that zero-shot classification uses:

    c_hat = [gamma * (c - mu / (K q)) / sigma + beta / (K q)] @ P / ||e||

with K = 2L + 1 intermediates (r_0, L attention layers, L MLPs), q the number of cells an
intermediate is split into (heads H, or tokens x heads N H), mu and sigma the LayerNorm's mean and
standard deviation of r_L. ``centring="component"`` instead centres each part by its own feature
mean (equally exact; cleaner for mean replacement, but not He et al.'s scale).

Why here and not in the reference's way: one batch at a time, nothing kept across batches (the
reference stacks every layer of every image: ~30 GB for ImageNet); callers reduce on the fly.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from clip_backdoor.errors import ConfigError
from clip_backdoor.models.image_tower import ImageTower

Centring = Literal["textspan", "component"]


@dataclass
class Decomposition:
    """Parts of the normalised embeddings of a batch; ``total()`` is ``encode_image``'s output."""

    direct: torch.Tensor  # (B, D): the CLS token after ln_pre
    heads: torch.Tensor  # (B, L, H, D): each head of each layer, summed over source tokens
    mlps: torch.Tensor  # (B, L, D)
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, N, H, D)

    def layers(self) -> torch.Tensor:
        """(B, L, D): each attention layer's term (its heads summed)."""
        return self.heads.sum(dim=2)

    def total(self) -> torch.Tensor:
        return self.direct + self.heads.sum(dim=(1, 2)) + self.mlps.sum(dim=1)


def check_decomposable(tower: ImageTower) -> None:
    """A one-line error for what the exact decomposition cannot express."""
    if type(tower) is not ImageTower:  # timm's towers end in an attention-pool head
        raise ConfigError(
            f"the decomposition does not reach {type(tower).__name__} towers yet (their "
            "attention-pool head is not a sum of per-token parts)"
        )
    visual = tower.visual
    if getattr(visual, "pool_type", "tok") != "tok":
        raise ConfigError(f"pool type '{visual.pool_type}' is not decomposable (only CLS pooling)")
    dropout = getattr(visual, "patch_dropout", None)
    if getattr(dropout, "training", False) and getattr(dropout, "prob", 0.0) > 0:
        raise ConfigError("patch dropout in train mode drops tokens at random: call model.eval()")
    for layer, block in enumerate(tower.blocks):
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            raise ConfigError(f"block {layer}: attention {type(attn).__name__} is unsupported")
        for scale in (block.ls_1, block.ls_2):  # Identity, or open_clip's elementwise LayerScale
            if not isinstance(scale, nn.Identity) and not hasattr(scale, "gamma"):
                raise ConfigError(f"block {layer}: layer scale {type(scale).__name__} unsupported")


def decomposable_tower(model: nn.Module) -> ImageTower:
    """The model's tower, or a one-line error before any work if it cannot be decomposed."""
    tower = ImageTower.of(model)
    check_decomposable(tower)
    return tower


def _scale(block: nn.Module, value: torch.Tensor) -> torch.Tensor:
    """LayerScale is elementwise and linear, so it applies to every part of the branch."""
    return block.ls_1(value)


def _token_terms(block: nn.Module, u: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, N, H, d): A^h_{0n} W_O^h v_n^h per source token n and head h (value bias included)."""
    attn = block.attn
    batch, length, width = u.shape
    heads = attn.num_heads
    w_v = attn.in_proj_weight[2 * width :]
    b_v = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    v = F.linear(u, w_v, b_v).view(batch, length, heads, -1)
    mixed = weights[:, :, 0, :].transpose(1, 2).unsqueeze(-1) * v  # (B, N, H, d_h)
    out = attn.out_proj.weight.view(width, heads, -1)
    return torch.einsum("bnhe,dhe->bnhd", mixed, out)


@torch.no_grad()
def decompose(
    model: nn.Module,
    images: torch.Tensor,
    token_layers: Collection[int] = (),
    centring: Centring = "textspan",
) -> Decomposition:
    """Decompose the embeddings of ``images`` (pixels in [0, 1] at model resolution).

    ``token_layers``: layers whose heads are also split by source token (memory B x N x H x D
    each, so only on request).
    """
    if getattr(model, "visual_prompts", None) is not None:
        raise ConfigError("a tower with visual prompts is not decomposable (decompose its base)")
    tower = ImageTower.of(model)
    check_decomposable(tower)
    if centring not in ("textspan", "component"):
        raise ConfigError(f"centring must be 'textspan' or 'component', got '{centring}'")
    layers = tower.layers
    for layer in token_layers:
        if not 0 <= layer < layers:
            raise ConfigError(f"token layer {layer} is outside a tower of {layers} blocks")
    normalize = getattr(model, "normalize", None)
    x = normalize(images) if normalize is not None else images
    blocks = tower.blocks
    direct: list[torch.Tensor] = []
    heads: list[torch.Tensor] = [None] * layers  # type: ignore[list-item]
    mlps: list[torch.Tensor] = [None] * layers  # type: ignore[list-item]
    tokens: dict[int, torch.Tensor] = {}
    final: list[torch.Tensor] = []

    def hook(layer: int, site: str, value: torch.Tensor) -> None:
        block = blocks[layer]
        if site == "resid_pre":
            if layer == 0:
                direct.append(value[:, 0].float())
            if layer in token_layers:
                tokens[layer] = block.ln_1(value).float()  # u, the heads' input
        elif site == "attn_weights" and layer in token_layers:
            terms = _token_terms(block, tokens[layer], value.float())
            bias = block.attn.out_proj.bias.float() / (terms.shape[1] * terms.shape[2])
            tokens[layer] = _scale(block, terms + bias)
        elif site == "attn_heads":
            bias = block.attn.out_proj.bias.float() / value.shape[2]
            heads[layer] = _scale(block, value[:, 0].float() + bias)
        elif site == "mlp":
            mlps[layer] = value[:, 0].float()
        elif site == "resid_post" and layer == layers - 1:
            final.append(value[:, 0].float())

    sites = ("resid_pre", "attn_weights", "attn_heads", "mlp", "resid_post")
    with torch.autocast(x.device.type, enabled=False):  # exact means fp32, even inside autocast
        tower.forward(x.float(), hook=hook, sites=sites, tokens=True)
    return _project(tower, direct[0], torch.stack(heads, 1), torch.stack(mlps, 1), tokens, centring)


def _project(
    tower: ImageTower,
    direct: torch.Tensor,
    heads: torch.Tensor,
    mlps: torch.Tensor,
    tokens: dict[int, torch.Tensor],
    centring: Centring,
) -> Decomposition:
    """Distribute ln_post and the projection over the parts, then divide by ||e||."""
    visual = tower.visual
    ln = visual.ln_post
    residual = direct + heads.sum(dim=(1, 2)) + mlps.sum(dim=1)
    mu = residual.mean(dim=-1, keepdim=True)
    sigma = (residual.var(dim=-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    gamma = ln.weight.float() if ln.weight is not None else torch.ones_like(residual[0])
    beta = ln.bias.float() if ln.bias is not None else torch.zeros_like(residual[0])
    proj = visual.proj.float() if visual.proj is not None else None
    count = 2 * tower.layers + 1
    embedding = ln(residual) @ proj if proj is not None else ln(residual)
    norm = embedding.norm(dim=-1, keepdim=True)

    def part(c: torch.Tensor, cells: int) -> torch.Tensor:
        extra = c.dim() - 2  # the part's own axes between batch and features
        shape = (c.shape[0],) + (1,) * extra + (1,)
        m, s, n = mu.view(shape), sigma.view(shape), norm.view(shape)
        centre = c.mean(dim=-1, keepdim=True) if centring == "component" else m / (count * cells)
        out = gamma * (c - centre) / s + beta / (count * cells)
        return (out @ proj if proj is not None else out) / n

    heads_count = heads.shape[2]
    return Decomposition(
        direct=part(direct, 1),
        heads=part(heads, heads_count),
        mlps=part(mlps, 1),
        tokens={layer: part(t, t.shape[1] * t.shape[2]) for layer, t in sorted(tokens.items())},
    )
