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
from torch import nn

from clip_backdoor.models.image_tower import _HEAD_SITES, Hook, ImageTower, _call


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

    def _block(
        self, layer: int, block: nn.Module, x: torch.Tensor, hook: Hook | None, sites: set[str]
    ) -> torch.Tensor:
        hook = hook or (lambda *_: None)
        x = _call(hook, layer, "resid_pre", x, sites)
        heads, weights = transformers_head_outputs(block.self_attn, block.layer_norm1(x))
        if sites & _HEAD_SITES:
            _call(hook, layer, "attn_weights", weights, sites)
            heads = _call(hook, layer, "attn_heads", heads, sites)
        attn = heads.sum(dim=2) + block.self_attn.out_proj.bias.to(heads.dtype)
        x = x + _call(hook, layer, "attn", attn, sites)
        x = x + _call(hook, layer, "mlp", block.mlp(block.layer_norm2(x)), sites)
        return _call(hook, layer, "resid_post", x, sites)


def transformers_head_outputs(
    attn: nn.Module, h: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Per-head outputs (B, T, H, d) through ``out_proj``, and the weights (B, H, T, T);
    ``mask`` (T, T) is added to the scores (the text towers' causal mask)."""
    batch, length, width = h.shape
    heads, size = attn.num_heads, attn.head_dim
    q = attn.q_proj(h).view(batch, length, heads, size)
    k = attn.k_proj(h).view(batch, length, heads, size)
    v = attn.v_proj(h).view(batch, length, heads, size)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * attn.scale
    weights = (scores if mask is None else scores + mask).softmax(dim=-1)
    mixed = torch.einsum("bhqk,bkhe->bqhe", weights, v)
    out = attn.out_proj.weight.view(width, heads, size).to(mixed.dtype)
    return torch.einsum("bqhe,dhe->bqhd", mixed, out), weights
