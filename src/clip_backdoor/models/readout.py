"""How a ViT tower turns its last block's tokens into the embedding, as a map that is linear once
its own statistics are fixed: what the exact decomposition distributes over the parts.

Every tower here ends the same way: a LayerNorm on each token, a pooling, an affine head.

- **Class-token readout** (open_clip ViT, EVA02, transformers CLIP): the pooled vector is the
  normed class token (``index``).
- **Attention-pool readout** (SigLIP, SigLIP2, PE-Core, transformers SigLIP): a learnt probe
  attends over every normed token. With the pool's attention weights ``w`` fixed at their value,
  its output is sum_g sum_n w_gn W_O^g W_V^g norm(x_n) plus constants (the value and output biases,
  since the weights of each pool head sum to one), then the pool adds an MLP of its own output.
  So each part of the residual stream reaches the embedding through ``values`` (per pool head
  g, W_O^g W_V^g) weighted by ``weights``; the biases and the pool's MLP term, which depends on the
  pooled vector as a whole, are the pool's own part (``constant``).
- **Mean readout** (timm's ``avg``): ``weights`` uniform over the patch tokens, ``values`` the
  identity.

The LayerNorm is linear once each token's mean and deviation are fixed (TextSpan's rule), so the
parts of a token still sum to its normed value; ``analysis.decomposition`` does that split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from clip_backdoor.core.errors import ConfigError

AFFINE = (nn.Linear, nn.Identity, nn.Dropout, nn.Sequential)


@dataclass
class Readout:
    norm: nn.Module  # the per-token LayerNorm before the pool
    head: torch.Tensor | None  # (P, E): the affine head after the pool, x @ head (None: identity)
    head_bias: torch.Tensor | None  # (E,)
    index: int | None = None  # class-token readout: the token read
    weights: torch.Tensor | None = None  # (B, G, T): pool weights per pool head over tokens
    values: torch.Tensor | None = None  # (G, P, d): W_O^g W_V^g per pool head (None: identity)
    constant: torch.Tensor | None = None  # (B, P): what the pool adds itself

    def head_of(self, pooled: torch.Tensor) -> torch.Tensor:
        """The head's linear part (no bias): biases belong to ``pool_part``."""
        return pooled if self.head is None else pooled @ self.head.to(pooled.dtype)

    def pool_part(self, like: torch.Tensor) -> torch.Tensor:
        """(B, E): the pool's own constant and the head's bias, through the head."""
        batch = like.shape[0]
        width = self.head.shape[1] if self.head is not None else like.shape[-1]
        out = torch.zeros(batch, width, dtype=like.dtype, device=like.device)
        if self.constant is not None:
            out = out + self.head_of(self.constant.to(like.dtype))
        if self.head_bias is not None:
            out = out + self.head_bias.to(like.dtype)
        return out


def affine_parts(
    fn: Callable[[torch.Tensor], torch.Tensor], modules: list[nn.Module], width: int, like
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(matrix (d, E), bias (E,)) of a head made of linear layers only (or None, None for an
    identity), read off by feeding it the identity; one line for a head that is not affine."""
    for module in modules:
        for part in module.modules():
            if not isinstance(part, AFFINE):
                raise ConfigError(
                    f"the head after the pool holds a {type(part).__name__}: only linear heads "
                    "are decomposable"
                )
            if isinstance(part, nn.Dropout) and part.training and part.p > 0:
                raise ConfigError("dropout in the head is active in train mode: call model.eval()")
    if all(not any(isinstance(p, nn.Linear) for p in m.modules()) for m in modules):
        return None, None
    eye = torch.eye(width, dtype=like.dtype, device=like.device)
    bias = fn(torch.zeros(1, width, dtype=like.dtype, device=like.device))[0]
    matrix = fn(eye) - bias
    return matrix, (bias if bias.abs().max() > 0 else None)


def attention_pool(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    w_v: torch.Tensor,
    b_v: torch.Tensor | None,
    w_o: torch.Tensor,
    b_o: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights (B, G, T), values (G, P, d), bias (P,)) of a one-probe attention pool.

    ``q`` (B, G, e) the probe's queries, ``k`` (B, G, T, e) the keys of the normed tokens,
    ``w_v`` (G e, d) and ``w_o`` (P, G e) the value and output projections; the bias is what the
    value and output biases add (each pool head's weights sum to one). The caller adds the
    pool's MLP term of its real output to it (the MLP reads the pooled vector whole).
    """
    heads, size = q.shape[1], q.shape[-1]
    weights = (torch.einsum("bge,bgte->bgt", q, k) * scale).softmax(dim=-1)
    w_o_heads = w_o.view(w_o.shape[0], heads, size)
    values = torch.einsum("pge,ged->gpd", w_o_heads, w_v.view(heads, size, -1))
    bias = torch.zeros(w_o.shape[0], dtype=q.dtype, device=q.device)
    if b_v is not None:
        bias = bias + w_o @ b_v
    if b_o is not None:
        bias = bias + b_o
    return weights, values, bias


def pool_output(
    weights: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, normed: torch.Tensor
) -> torch.Tensor:
    """(B, P): the pool's attention output from the normed tokens (B, T, d)."""
    return torch.einsum("bgt,gpd,btd->bp", weights, values, normed) + bias
