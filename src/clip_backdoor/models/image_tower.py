"""open_clip's ViT image tower run block by block: deep prompts and hooks on every block.

Why: RVPT inserts learnable tokens before every prompted block, and the decomposition analysis
reads (and Decomp-Rep replaces) each block's attention heads and MLP output. open_clip's
``encode_image`` runs the blocks as one opaque call; this forward runs them one at a time and
equals it (bit for bit when nothing is prompted or hooked, to float tolerance when heads are read).

Hooks: ``hook(layer, site, tensor)`` sees the sites named in ``sites`` and may return a tensor to
use instead (None keeps it). Sites, per block, in order:

- ``resid_pre``: the block's input (B, T, d), prompts included;
- ``attn_weights``: attention probabilities (B, H, T, T) (read only);
- ``attn_heads``: each head's output through its slice of the output projection (B, T, H, d);
  their sum plus ``attn_bias`` is the attention output (before LayerScale, ``attn_scale``);
- ``attn_values``: each source token's value through each head's slice of the output projection
  (B, T, H, d), before the attention mixes them (read only; not on towers with a norm inside
  attention);
- ``attn``: the attention branch added to the stream (B, T, d);
- ``mlp``: the MLP branch added to the stream (B, T, d);
- ``resid_post``: the block's output (B, T, d).

Token order inside the tower: [CLS, prompts (n_p, only while prompted), patches]; a tower
without a class token (SigLIP) has none before the prompts (``prefix``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.models.readout import Readout

Hook = Callable[[int, str, torch.Tensor], "torch.Tensor | None"]
SITES = ("resid_pre", "attn_weights", "attn_values", "attn_heads", "attn", "mlp", "resid_post")
_HEAD_SITES = {"attn_weights", "attn_values", "attn_heads"}
_BRANCH_SITES = {"attn", "mlp"} | _HEAD_SITES


@dataclass
class ImageTower:
    visual: nn.Module  # open_clip's VisionTransformer

    @classmethod
    def of(cls, model: nn.Module) -> ImageTower:
        """The tower of a PixelCLIP or open_clip CLIP, or a one-line error saying what it lacks:
        open_clip's ViT here, the timm ViTs open_clip builds (SigLIP) in ``timm_tower``, the
        transformers vision models (CLIP, SigLIP) in ``transformers_tower``."""
        clip = getattr(model, "clip", model)
        visual = getattr(clip, "visual", None)
        from clip_backdoor.models.timm_tower import TimmViTTower, is_timm_vit
        from clip_backdoor.models.transformers_tower import (
            TransformersViTTower,
            is_transformers_vision,
        )

        if is_timm_vit(visual):
            return TimmViTTower.of_timm(visual)
        if is_transformers_vision(visual):
            return TransformersViTTower(visual)
        parts = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer")
        if visual is None or not all(hasattr(visual, p) for p in parts):
            kind = type(visual).__name__ if visual is not None else type(clip).__name__
            raise ConfigError(
                f"the image tower ({kind}) is not a ViT: no tokens to prompt or heads to split "
                "(tower-level methods apply to the ViT families)"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise ConfigError("ViTs with attention pooling (CoCa) are unsupported")
        for block in visual.transformer.resblocks:
            if not isinstance(block, ResidualAttentionBlock) or hasattr(block, "ln_1_kv"):
                raise ConfigError(f"ViT blocks of type {type(block).__name__} are unsupported")
        return cls(visual)

    prefix = 1  # tokens before the prompts and patches: the class token

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    def check_decomposable(self) -> None:
        """A one-line error for what the exact decomposition cannot express in this tower."""
        visual = self.visual
        if getattr(visual, "pool_type", "tok") != "tok":
            raise ConfigError(
                f"pool type '{visual.pool_type}' is not decomposable (only CLS pooling)"
            )
        dropout = getattr(visual, "patch_dropout", None)
        if getattr(dropout, "training", False) and getattr(dropout, "prob", 0.0) > 0:
            raise ConfigError(
                "patch dropout in train mode drops tokens at random: call model.eval()"
            )
        for layer, block in enumerate(self.blocks):
            attn = block.attn
            if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                raise ConfigError(f"block {layer}: attention {type(attn).__name__} is unsupported")
            for scale in (block.ls_1, block.ls_2):  # Identity, or open_clip's LayerScale
                if not isinstance(scale, nn.Identity) and not hasattr(scale, "gamma"):
                    raise ConfigError(
                        f"block {layer}: layer scale {type(scale).__name__} unsupported"
                    )

    def readout(self, tokens: torch.Tensor) -> Readout:
        """The class token, ``ln_post``, the projection (``models.readout``)."""
        proj = self.visual.proj
        return Readout(self.visual.ln_post, proj, None, index=0)

    def attn_bias(self, block: nn.Module) -> torch.Tensor:
        """The attention branch's constant: what the heads' outputs sum to it with."""
        return block.attn.out_proj.bias

    def attn_scale(self, block: nn.Module, value: torch.Tensor) -> torch.Tensor:
        """The block's LayerScale on the attention branch (elementwise, so per part too)."""
        return block.ls_1(value)

    @property
    def layers(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        return int(self.visual.class_embedding.shape[-1])

    @property
    def heads(self) -> int:
        return int(self.blocks[0].attn.num_heads)

    @property
    def patch_size(self) -> int:
        return int(self.visual.conv1.kernel_size[0])

    @property
    def num_patches(self) -> int:
        return int(self.visual.positional_embedding.shape[0]) - 1

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> tokens (B, 1 + N, d) after ln_pre."""
        visual = self.visual
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        cls_token = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_token.to(x.dtype), x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + N, d) after the last block -> image features (open_clip's ``_pool``)."""
        visual = self.visual
        if getattr(visual, "final_ln_after_pool", False):
            pooled = visual.ln_post(_global_pool(x, visual.pool_type))
        else:
            pooled = _global_pool(visual.ln_post(x), visual.pool_type)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def forward(
        self,
        images: torch.Tensor,
        prompts: torch.Tensor | None = None,
        first_prompted: int = 0,
        hook: Hook | None = None,
        sites: Collection[str] = (),
        tokens: bool = False,
    ) -> torch.Tensor:
        """Features of normalised images; ``prompts`` (P, n_p, d) replace the prompt tokens at
        blocks ``first_prompted`` .. ``first_prompted + P - 1`` (VPT-deep). ``tokens``: return
        the last block's output (prompts dropped) instead of the pooled features."""
        unknown = set(sites) - set(SITES)
        if unknown:
            raise ConfigError(f"unknown hook sites {sorted(unknown)} (known: {', '.join(SITES)})")
        if prompts is not None:
            check_prompt_depth(self, prompts.shape[0], first_prompted)
        x = self.embed(images)
        n_prompt, k = 0, self.prefix
        for layer, block in enumerate(self.blocks):
            if prompts is not None and first_prompted <= layer < first_prompted + len(prompts):
                p = prompts[layer - first_prompted].to(x.dtype).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :k], p, x[:, k + n_prompt :]], dim=1)
                n_prompt = p.shape[1]
            self.prompt_tokens = n_prompt  # towers whose blocks must know (rotary positions)
            x = self._block(layer, block, x, hook if sites else None, set(sites))
        x = torch.cat([x[:, :k], x[:, k + n_prompt :]], dim=1)
        return x if tokens else self.pool(x)

    def _block(
        self, layer: int, block: nn.Module, x: torch.Tensor, hook: Hook | None, sites: set[str]
    ) -> torch.Tensor:
        if hook is None:
            return _batch_first(block, x)
        x = _call(hook, layer, "resid_pre", x, sites)
        if sites & _BRANCH_SITES:
            h = block.ln_1(x)
            if sites & _HEAD_SITES:
                heads, weights, values = head_outputs(block.attn, h, "attn_values" in sites)
                heads = _head_sites(hook, layer, heads, weights, values, sites)
                attn = heads.sum(dim=2) + block.attn.out_proj.bias.to(heads.dtype)
            else:
                attn = _batch_first(block, h, attention_only=True)
            x = x + _call(hook, layer, "attn", block.ls_1(attn), sites)
            x = x + _call(hook, layer, "mlp", block.ls_2(block.mlp(block.ln_2(x))), sites)
        else:
            x = _batch_first(block, x)
        return _call(hook, layer, "resid_post", x, sites)


def head_outputs(
    attn: nn.MultiheadAttention, h: torch.Tensor, values: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-head outputs (B, T, H, d) through the output projection, the weights (B, H, T, T),
    and (``values``) each source token's value through it (B, T, H, d)."""
    batch, length, width = h.shape
    heads = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(batch, length, 3, heads, -1)
    q, k, v = qkv.unbind(dim=2)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(q.shape[-1])
    weights = scores.softmax(dim=-1)
    return mix_heads(weights, v, attn.out_proj.weight.view(width, heads, -1), values)


def mix_heads(
    weights: torch.Tensor, v: torch.Tensor, out: torch.Tensor, values: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Heads (B, T, H, d) from weights (B, H, T, T), values (B, T, H, e) and the output
    projection per head (d, H, e); with ``values``, the values through it too."""
    mixed = torch.einsum("bhqk,bkhe->bqhe", weights, v)
    out = out.to(mixed.dtype)
    through = torch.einsum("bkhe,dhe->bkhd", v, out) if values else None
    return torch.einsum("bqhe,dhe->bqhd", mixed, out), weights, through


def _head_sites(hook, layer, heads, weights, values, sites) -> torch.Tensor:
    """Show the read-only head sites, then ``attn_heads`` (which a hook may replace)."""
    _call(hook, layer, "attn_weights", weights, sites)
    if values is not None:
        _call(hook, layer, "attn_values", values, sites)
    return _call(hook, layer, "attn_heads", heads, sites)


def check_prompt_depth(tower: ImageTower, blocks: int, first: int) -> None:
    if first < 0 or first + blocks > tower.layers:
        raise ConfigError(
            f"prompts for blocks {first}..{first + blocks - 1} do not fit a tower of "
            f"{tower.layers} blocks"
        )


def _call(hook: Hook, layer: int, site: str, value: torch.Tensor, sites: set[str]):
    if site not in sites:
        return value
    replaced = hook(layer, site, value)
    return value if replaced is None else replaced


def _batch_first(block: nn.Module, x: torch.Tensor, attention_only: bool = False) -> torch.Tensor:
    """Run a block (or its attention on already-normed ``x``) on (B, T, d) whatever its layout."""
    flip = not getattr(block.attn, "batch_first", True)
    x = x.transpose(0, 1) if flip else x
    y = block.attention(q_x=x) if attention_only else block(x)
    return y.transpose(0, 1) if flip else y


def _global_pool(x: torch.Tensor, pool_type: str) -> torch.Tensor:
    if pool_type == "avg":
        return x[:, 1:].mean(dim=1)
    if pool_type == "tok":
        return x[:, 0]
    return x
