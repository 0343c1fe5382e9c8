"""Hugging Face ``transformers`` vision towers (CLIP, SigLIP) run block by block.

Why: VPT, RVPT and the head hooks need each encoder layer on its own; transformers runs the
encoder as one call. This adapter follows transformers' own forward (embeddings, CLIP's
``pre_layrnorm``, the encoder layers, ``post_layernorm``, then CLIP's class token and
``visual_projection`` or SigLIP's attention-pool head) and equals it
(``tests/test_families.py``). Attention is computed here from the layer's ``q/k/v/out_proj``
(transformers' eager attention), so each head's output through its slice of ``out_proj`` is
available, summing with ``out_proj.bias`` to the attention branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clip_backdoor.models.image_tower import (
    _HEAD_SITES,
    Hook,
    ImageTower,
    _call,
    _head_sites,
    mix_heads,
)
from clip_backdoor.models.readout import Readout, affine_parts, attention_pool, pool_output


def is_transformers_vision(visual: nn.Module | None) -> bool:
    model = getattr(visual, "model", None)
    return hasattr(model, "embeddings") and hasattr(model, "encoder") and hasattr(visual, "kind")


@dataclass
class TransformersViTTower(ImageTower):
    """``visual`` is ``transformers_clip._Tower``: ``.model`` the vision model, ``.proj``."""

    @property
    def model(self) -> nn.Module:
        return self.visual.model

    @property
    def prefix(self) -> int:  # CLIP's class token; SigLIP has none
        return 1 if hasattr(self.model.embeddings, "class_embedding") else 0

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.encoder.layers

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    @property
    def num_patches(self) -> int:
        return int(self.model.embeddings.num_patches)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.model.embeddings(images)
        pre = getattr(self.model, "pre_layrnorm", None)
        return pre(x) if pre is not None else x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.prefix:  # CLIP: the class token, normed, projected
            pooled = model.post_layernorm(x[:, 0])
        else:  # SigLIP: every token normed, then the attention-pool head
            pooled = model.head(model.post_layernorm(x))
        return pooled if self.visual.proj is None else self.visual.proj(pooled)

    def check_decomposable(self) -> None:
        """transformers' CLIP and SigLIP vision models are plain: every one decomposes."""

    def readout(self, tokens: torch.Tensor) -> Readout:
        """CLIP: the normed class token, ``visual_projection``. SigLIP: every token normed, then
        the attention-pool head (``nn.MultiheadAttention`` with a probe, then its MLP)."""
        model, proj = self.model, self.visual.proj

        def head(v: torch.Tensor) -> torch.Tensor:
            return v if proj is None else proj(v)

        matrix, bias = affine_parts(head, [] if proj is None else [proj], self.width, tokens)
        if self.prefix:
            return Readout(model.post_layernorm, matrix, bias, index=0)
        pool = model.head
        attn = pool.attention
        normed = model.post_layernorm(tokens)
        batch, length, width = normed.shape
        heads, size = attn.num_heads, width // attn.num_heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q = F.linear(pool.probe[:, 0], w[:width], b[:width]).expand(batch, -1)
        k = F.linear(normed, w[width : 2 * width], b[width : 2 * width])
        k = k.view(batch, length, heads, size).transpose(1, 2)
        weights, values, constant = attention_pool(
            q.reshape(batch, heads, size),
            k,
            size**-0.5,
            w[2 * width :],
            b[2 * width :],
            attn.out_proj.weight,
            attn.out_proj.bias,
        )
        attended = pool_output(weights, values, constant, normed)
        constant = constant + pool.mlp(pool.layernorm(attended))
        return Readout(model.post_layernorm, matrix, bias, None, weights, values, constant)

    def attn_bias(self, block: nn.Module) -> torch.Tensor:
        return block.self_attn.out_proj.bias

    def attn_scale(self, block: nn.Module, value: torch.Tensor) -> torch.Tensor:
        return value

    def _block(
        self, layer: int, block: nn.Module, x: torch.Tensor, hook: Hook | None, sites: set[str]
    ) -> torch.Tensor:
        hook = hook or (lambda *_: None)
        x = _call(hook, layer, "resid_pre", x, sites)
        heads, weights, values = transformers_head_outputs(
            block.self_attn, block.layer_norm1(x), values="attn_values" in sites
        )
        if sites & _HEAD_SITES:
            heads = _head_sites(hook, layer, heads, weights, values, sites)
        attn = heads.sum(dim=2) + block.self_attn.out_proj.bias.to(heads.dtype)
        x = x + _call(hook, layer, "attn", attn, sites)
        x = x + _call(hook, layer, "mlp", block.mlp(block.layer_norm2(x)), sites)
        return _call(hook, layer, "resid_post", x, sites)


def transformers_head_outputs(
    attn: nn.Module, h: torch.Tensor, mask: torch.Tensor | None = None, values: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-head outputs (B, T, H, d) through ``out_proj``, the weights (B, H, T, T) and
    (``values``) each source token's value through it; ``mask`` (T, T) is added to the scores
    (the text towers' causal mask)."""
    batch, length, width = h.shape
    heads, size = attn.num_heads, attn.head_dim
    q = attn.q_proj(h).view(batch, length, heads, size)
    k = attn.k_proj(h).view(batch, length, heads, size)
    v = attn.v_proj(h).view(batch, length, heads, size)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * attn.scale
    weights = (scores if mask is None else scores + mask).softmax(dim=-1)
    return mix_heads(weights, v, attn.out_proj.weight.view(width, heads, size), values)
