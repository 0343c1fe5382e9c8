"""The timm ViTs open_clip builds (SigLIP, SigLIP2) run block by block, as ``ImageTower`` does.

Why: VPT, RVPT and the head hooks need the tower's blocks one at a time, and open_clip's
``TimmModel`` runs timm's ``VisionTransformer`` as one call. This adapter follows timm's own
``forward_features`` + ``forward_head`` (patch embedding, positions, prefix tokens, blocks, final
norm, pooling, open_clip's head) and equals it (``tests/test_families.py``).

Pooling: SigLIP has no class token; its embedding is an attention-pool head (``map``: a learnt
probe attends over the final tokens, then an MLP). Prompts are inserted after the prefix tokens
(none for SigLIP) and dropped before the pool, so the pool sees the patches as unprompted.
Per-head outputs exist where the attention is plain (no per-head norm after attention, no gate):
each head's output through its slice of ``proj``, summing with ``proj.bias`` to the branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clip_backdoor.errors import ConfigError
from clip_backdoor.models.image_tower import _HEAD_SITES, Hook, ImageTower, _call


def is_timm_vit(visual: nn.Module | None) -> bool:
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(getattr(visual, "trunk", None), VisionTransformer | Eva)


@dataclass
class TimmViTTower(ImageTower):
    """``visual`` is open_clip's ``TimmModel``; its ``trunk`` the timm ``VisionTransformer``."""

    @classmethod
    def of_timm(cls, visual: nn.Module) -> TimmViTTower:
        from timm.models.eva import Eva

        trunk = visual.trunk
        if getattr(trunk, "dynamic_img_size", False):
            raise ConfigError("timm ViTs with a dynamic image size are unsupported")
        if isinstance(trunk, Eva):
            if getattr(trunk, "rope_mixed", False):
                raise ConfigError("EVA towers with depth-mixed rotary positions are unsupported")
            return EvaTower(visual)
        return cls(visual)

    @property
    def trunk(self) -> nn.Module:
        return self.visual.trunk

    @property
    def prefix(self) -> int:  # class and register tokens
        return int(self.trunk.num_prefix_tokens)

    @property
    def blocks(self) -> nn.Sequential:
        return self.trunk.blocks

    @property
    def width(self) -> int:
        return int(self.trunk.embed_dim)

    @property
    def heads(self) -> int:
        return int(self.blocks[0].attn.num_heads)

    @property
    def patch_size(self) -> int:
        return int(self.trunk.patch_embed.patch_size[0])

    @property
    def num_patches(self) -> int:
        return int(self.trunk.patch_embed.num_patches)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> tokens (B, prefix + N, d) as the first block sees them."""
        trunk = self.trunk
        x = trunk._pos_embed(trunk.patch_embed(images))
        return trunk.norm_pre(trunk.patch_drop(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block -> image features (timm's norm and head, open_clip's)."""
        return self.visual.head(self.trunk.forward_head(self.trunk.norm(x)))

    def _block(
        self, layer: int, block: nn.Module, x: torch.Tensor, hook: Hook | None, sites: set[str]
    ) -> torch.Tensor:
        if hook is None:
            return block(x)
        x = _call(hook, layer, "resid_pre", x, sites)
        h = block.norm1(x)
        if sites & _HEAD_SITES:
            heads, weights = timm_head_outputs(block.attn, h)
            _call(hook, layer, "attn_weights", weights, sites)
            heads = _call(hook, layer, "attn_heads", heads, sites)
            attn = heads.sum(dim=2) + _bias(block.attn.proj, heads)
        else:
            attn = block.attn(h)
        x = x + _call(hook, layer, "attn", block.ls1(attn), sites)
        x = x + _call(hook, layer, "mlp", block.ls2(block.mlp(block.norm2(x))), sites)
        return _call(hook, layer, "resid_post", x, sites)


@dataclass
class EvaTower(TimmViTTower):
    """timm's ``Eva`` (EVA02, PE-Core): rotary positions on the patch tokens of every block.

    Prompts carry no position, so the rotary embedding skips them as it skips the class token:
    each attention is told the prefix is the class token plus the prompts.
    """

    rope: torch.Tensor | None = None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        trunk = self.trunk
        x, self.rope = trunk._pos_embed(trunk.patch_embed(images))
        return trunk.norm_pre(x)

    def _block(
        self, layer: int, block: nn.Module, x: torch.Tensor, hook: Hook | None, sites: set[str]
    ) -> torch.Tensor:
        attention = block.attn
        saved = attention.num_prefix_tokens
        attention.num_prefix_tokens = self.prefix + getattr(self, "prompt_tokens", 0)
        try:
            if hook is None:
                return block(x, rope=self.rope)
            if sites & _HEAD_SITES:
                raise ConfigError("per-head outputs of EVA towers are not available yet")
            x = _call(hook, layer, "resid_pre", x, sites)
            attn = block.attn(block.norm1(x), rope=self.rope)
            attn = attn if block.gamma_1 is None else block.gamma_1 * attn
            x = x + _call(hook, layer, "attn", attn, sites)
            mlp = block.mlp(block.norm2(x))
            mlp = mlp if block.gamma_2 is None else block.gamma_2 * mlp
            x = x + _call(hook, layer, "mlp", mlp, sites)
            return _call(hook, layer, "resid_post", x, sites)
        finally:
            attention.num_prefix_tokens = saved


def timm_head_outputs(attn: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head outputs (B, T, H, d) through ``proj``, and the weights (B, H, T, T)."""
    if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
        raise ConfigError("per-head outputs need plain attention (no norm or gate after it)")
    batch, length, _ = h.shape
    heads = attn.num_heads
    qkv = attn.qkv(h).reshape(batch, length, 3, heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    mixed = (weights @ v).transpose(1, 2)  # (B, T, H, e)
    out = attn.proj.weight.view(attn.proj.weight.shape[0], heads, -1).to(mixed.dtype)
    return torch.einsum("bqhe,dhe->bqhd", mixed, out), weights


def _bias(linear: nn.Linear, like: torch.Tensor) -> torch.Tensor:
    return 0 if linear.bias is None else linear.bias.to(like.dtype)
