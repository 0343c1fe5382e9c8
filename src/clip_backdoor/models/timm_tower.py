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
import torch.nn.functional as F
from torch import nn

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.models.image_tower import (
    _HEAD_SITES,
    Hook,
    ImageTower,
    _call,
    _head_sites,
    mix_heads,
)
from clip_backdoor.models.readout import Readout, affine_parts, attention_pool, pool_output


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

    def check_decomposable(self) -> None:
        trunk = self.trunk
        if trunk.global_pool not in ("token", "avg", "map"):
            raise ConfigError(f"timm pool '{trunk.global_pool}' is not decomposable")
        if not isinstance(trunk.norm, nn.LayerNorm):
            raise ConfigError(f"the final norm {type(trunk.norm).__name__} is not a LayerNorm")
        if not isinstance(trunk.fc_norm, nn.Identity):
            raise ConfigError("a norm after the pool (timm's fc_norm) is not decomposable")
        if getattr(trunk.patch_drop, "training", False) and getattr(trunk.patch_drop, "prob", 0):
            raise ConfigError(
                "patch dropout in train mode drops tokens at random: call model.eval()"
            )
        pool = getattr(trunk, "attn_pool", None)
        if pool is not None:
            if pool.pos_embed is not None or pool.latent.shape[1] != 1:
                raise ConfigError("attention pools with positions or several probes: unsupported")
            if not all(isinstance(n, nn.Identity) for n in (pool.q_norm, pool.k_norm)):
                raise ConfigError("attention pools with query/key norms are unsupported")
        for layer, block in enumerate(self.blocks):
            self._check_attention(layer, block.attn)

    def _check_attention(self, layer: int, attn: nn.Module) -> None:
        if getattr(attn, "gate", None) is not None or not isinstance(attn.norm, nn.Identity):
            raise ConfigError(f"block {layer}: attention with a gate or an inner norm: unsupported")

    def readout(self, tokens: torch.Tensor) -> Readout:
        """timm's final norm, then its pool (class token, mean, or the attention pool), then
        timm's and open_clip's heads (linear)."""
        trunk = self.trunk
        heads = [trunk.head_drop, trunk.head, self.visual.head]

        def head(v: torch.Tensor) -> torch.Tensor:
            return self.visual.head(trunk.head(trunk.head_drop(v)))

        matrix, bias = affine_parts(head, heads, self.width, tokens)
        if trunk.global_pool == "token":
            return Readout(trunk.norm, matrix, bias, index=0)
        if trunk.global_pool == "avg":
            weights = torch.zeros(tokens.shape[0], 1, tokens.shape[1], device=tokens.device)
            weights[:, :, self.prefix :] = 1 / (tokens.shape[1] - self.prefix)
            return Readout(trunk.norm, matrix, bias, weights=weights.to(tokens.dtype))
        pool = trunk.attn_pool
        normed = trunk.norm(tokens)
        batch, length, width = normed.shape
        latent = pool.latent.expand(batch, -1, -1)[:, 0]
        q = pool.q(latent) if getattr(pool, "q", None) is not None else latent
        heads_n, size = pool.num_heads, pool.head_dim
        w_kv, b_kv = pool.kv.weight, pool.kv.bias
        inner = w_kv.shape[0] // 2
        k = F.linear(normed, w_kv[:inner], None if b_kv is None else b_kv[:inner])
        k = k.view(batch, length, heads_n, size).transpose(1, 2)
        w_v, b_v = w_kv[inner:], None if b_kv is None else b_kv[inner:]
        weights, values, constant = attention_pool(
            q.view(batch, heads_n, size), k, pool.scale, w_v, b_v, pool.proj.weight, pool.proj.bias
        )
        attended = pool_output(weights, values, constant, normed)
        constant = constant + pool.mlp(pool.norm(attended))
        return Readout(trunk.norm, matrix, bias, None, weights, values, constant)

    def attn_bias(self, block: nn.Module) -> torch.Tensor:
        return _bias(block.attn.proj, block.attn.proj.weight)

    def attn_scale(self, block: nn.Module, value: torch.Tensor) -> torch.Tensor:
        return block.ls1(value)

    def _block(
        self, layer: int, block: nn.Module, x: torch.Tensor, hook: Hook | None, sites: set[str]
    ) -> torch.Tensor:
        if hook is None:
            return block(x)
        x = _call(hook, layer, "resid_pre", x, sites)
        h = block.norm1(x)
        if sites & _HEAD_SITES:
            heads, weights, values = timm_head_outputs(block.attn, h, "attn_values" in sites)
            heads = _head_sites(hook, layer, heads, weights, values, sites)
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
    each attention is told the prefix is the class token plus the prompts. EVA02's attention
    ends in a LayerNorm over the heads' concatenated outputs before ``proj``; with that token's
    mean and deviation fixed it is linear, so each head's part is its slice normed on the
    whole's statistics (centred by its share of the mean) through its slice of ``proj``, and
    ``proj`` of the norm's bias plus ``proj.bias`` is the branch's constant (``attn_bias``).
    """

    rope: torch.Tensor | None = None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        trunk = self.trunk
        x, self.rope = trunk._pos_embed(trunk.patch_embed(images))
        return trunk.norm_pre(x)

    def _check_attention(self, layer: int, attn: nn.Module) -> None:
        if getattr(attn, "gate", None) is not None:
            raise ConfigError(f"block {layer}: attention with a gate is unsupported")
        if not isinstance(attn.norm, nn.Identity | nn.LayerNorm):
            raise ConfigError(f"block {layer}: inner norm {type(attn.norm).__name__} unsupported")

    def attn_bias(self, block: nn.Module) -> torch.Tensor:
        attn = block.attn
        bias = _bias(attn.proj, attn.proj.weight)
        if isinstance(attn.norm, nn.LayerNorm) and attn.norm.bias is not None:
            bias = bias + attn.proj.weight @ attn.norm.bias
        return bias

    def attn_scale(self, block: nn.Module, value: torch.Tensor) -> torch.Tensor:
        return value if block.gamma_1 is None else block.gamma_1 * value

    def _block(
        self, layer: int, block: nn.Module, x: torch.Tensor, hook: Hook | None, sites: set[str]
    ) -> torch.Tensor:
        attention = block.attn
        saved = attention.num_prefix_tokens
        attention.num_prefix_tokens = self.prefix + getattr(self, "prompt_tokens", 0)
        try:
            if hook is None:
                return block(x, rope=self.rope)
            x = _call(hook, layer, "resid_pre", x, sites)
            h = block.norm1(x)
            if sites & _HEAD_SITES:
                heads, weights, values = eva_head_outputs(
                    attention, h, self.rope, "attn_values" in sites
                )
                heads = _head_sites(hook, layer, heads, weights, values, sites)
                attn = heads.sum(dim=2) + self.attn_bias(block).to(heads.dtype)
            else:
                attn = attention(h, rope=self.rope)
            x = x + _call(hook, layer, "attn", self.attn_scale(block, attn), sites)
            mlp = block.mlp(block.norm2(x))
            mlp = mlp if block.gamma_2 is None else block.gamma_2 * mlp
            x = x + _call(hook, layer, "mlp", mlp, sites)
            return _call(hook, layer, "resid_post", x, sites)
        finally:
            attention.num_prefix_tokens = saved


def timm_head_outputs(
    attn: nn.Module, h: torch.Tensor, values: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-head outputs (B, T, H, d) through ``proj``, the weights (B, H, T, T), and
    (``values``) each source token's value through it."""
    if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
        raise ConfigError("per-head outputs need plain attention (no norm or gate after it)")
    batch, length, _ = h.shape
    heads = attn.num_heads
    qkv = attn.qkv(h).reshape(batch, length, 3, heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = attn.proj.weight.view(attn.proj.weight.shape[0], heads, -1)
    return mix_heads(weights, v.transpose(1, 2), out, values)


def eva_head_outputs(
    attn: nn.Module, h: torch.Tensor, rope: torch.Tensor | None, values: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-head outputs of timm's ``EvaAttention``/``AttentionRope`` (rotary positions on the
    tokens after ``num_prefix_tokens``), as ``timm_head_outputs``; with an inner LayerNorm,
    each head's slice normed on the whole's statistics (``EvaTower``), and no ``values``."""
    from timm.layers import apply_rot_embed_cat

    batch, length, _ = h.shape
    heads = attn.num_heads
    if attn.qkv is not None:
        bias = None
        if getattr(attn, "q_bias", None) is not None:
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(h, attn.qkv.weight, bias)
        if attn.qkv.bias is not None:
            qkv = qkv + attn.qkv.bias
        q, k, v = qkv.reshape(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (
            proj(h).reshape(batch, length, -1, attn.head_dim).transpose(1, 2)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
    groups = heads // k.shape[1]
    if groups > 1:  # grouped-query attention: head h reads kv head h // groups
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        n, half = attn.num_prefix_tokens, getattr(attn, "rotate_half", False)
        q = torch.cat([q[:, :, :n], apply_rot_embed_cat(q[:, :, n:], rope, half=half)], 2)
        k = torch.cat([k[:, :, :n], apply_rot_embed_cat(k[:, :, n:], rope, half=half)], 2)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1).type_as(v)
    weight = attn.proj.weight
    out = weight.view(weight.shape[0], heads, -1)
    norm = attn.norm
    if isinstance(norm, nn.Identity):
        return mix_heads(weights, v.transpose(1, 2), out, values)
    mixed = torch.einsum("bhqk,bhke->bqhe", weights, v)  # (B, T, H, e)
    whole = mixed.flatten(2)
    sigma = (whole.var(dim=-1, unbiased=False) + norm.eps).sqrt()[..., None, None]
    share = mixed.sum(dim=-1, keepdim=True) / whole.shape[-1]  # each head's share of the mean
    gamma = (norm.weight if norm.weight is not None else torch.ones_like(whole[0, 0])).view(
        heads, -1
    )
    own = torch.einsum("bqhe,dhe->bqhd", mixed * gamma / sigma, out.to(mixed.dtype))
    centred = (share / sigma) * (weight @ gamma.flatten()).to(mixed.dtype)
    return own - centred, weights, None


def _bias(linear: nn.Linear, like: torch.Tensor) -> torch.Tensor:
    return 0 if linear.bias is None else linear.bias.to(like.dtype)
