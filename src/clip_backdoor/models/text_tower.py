"""The text tower of an open_clip model, fed token ids or token *embeddings*.

Why: prompt learners (CoOp, CoCoOp, the trigger-aware attack) replace some token embeddings by
learnt vectors, so they need the tower from the embedding layer on. One adapter serves every
open_clip text tower built on ``TextTransformer`` layout (``CLIP``'s own attributes, or
``CustomTextCLIP.text``). Under a causal mask the tokens after the pooled one cannot change it, so
the sequence is cut after the longest prompt's pooled token: exact, and most of the cost saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clip_backdoor.core.errors import ConfigError


@dataclass
class TextTower:
    module: nn.Module  # the object that holds token_embedding, transformer, ln_final, ...
    pool_type: str
    eos_id: int | None

    @classmethod
    def of(cls, clip: nn.Module) -> TextTower:
        """The adapter for ``clip``, or a one-line error naming what the tower lacks."""
        if hasattr(clip, "token_embedding"):
            return cls(clip, getattr(clip, "text_pool_type", "argmax"), _eos(clip, "text_eos_id"))
        text = getattr(clip, "text", None)
        from clip_backdoor.models.transformers_text import (
            TransformersTextTower,
            is_transformers_text,
        )

        if is_transformers_text(text):
            return TransformersTextTower.of_transformers(text)
        if text is not None and hasattr(text, "token_embedding"):
            if getattr(text, "cls_emb", None) is not None:
                raise ConfigError("text towers with an appended CLS token (CoCa) are unsupported")
            return cls(text, getattr(text, "pool_type", "argmax"), _eos(text, "eos_id"))
        raise ConfigError(
            f"{type(clip).__name__} has no open_clip TextTransformer text tower "
            "(token embeddings cannot be fed to it)"
        )

    @property
    def width(self) -> int:
        return int(self.module.token_embedding.weight.shape[1])

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def context_length(self) -> int:
        return int(self.module.positional_embedding.shape[0])

    @property
    def causal(self) -> bool:
        return getattr(self.module, "attn_mask", None) is not None

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position each sequence's feature is read from (open_clip's ``text_global_pool``)."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos" and self.eos_id is not None:
            return (tokens == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "last":
            return torch.full(tokens.shape[:1], tokens.shape[1] - 1, dtype=torch.long)
        if self.pool_type == "first":
            return torch.zeros(tokens.shape[:1], dtype=torch.long)
        raise ConfigError(f"text pooling '{self.pool_type}' is unsupported for prompt learning")

    def needed_length(self, pooled_at: torch.Tensor) -> int:
        """Tokens that must be run: up to the last pooled one when causal, else all of them."""
        if self.causal and self.pool_type in ("argmax", "eos", "first"):
            return int(pooled_at.max()) + 1
        return self.context_length

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module.token_embedding(tokens)

    def encode_embeddings(self, embeddings: torch.Tensor, pooled_at: torch.Tensor) -> torch.Tensor:
        """Features (N, D) of token embeddings (N, L, d) without positions, read at ``pooled_at``.

        L may be shorter than the context when the tower is causal (see ``needed_length``).
        """
        tower = self.module
        length = embeddings.shape[1]
        if length != self.context_length and length < self.needed_length(pooled_at):
            raise ConfigError(f"{length} token embeddings cannot hold the pooled positions")
        cast_dtype = tower.transformer.get_cast_dtype()
        x = embeddings.to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
        mask = tower.attn_mask[:length, :length] if self.causal else None
        x = tower.transformer(x, attn_mask=mask)
        x = tower.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), pooled_at.to(x.device)]
        projection = tower.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's ``encode_text`` (unnormalised), run only over the tokens that matter."""
        pooled_at = self.pool_index(tokens)
        length = self.needed_length(pooled_at)
        return self.encode_embeddings(self.embed(tokens[:, :length]), pooled_at)


def _eos(module: nn.Module, attribute: str) -> int | None:
    value = getattr(module, attribute, None)
    return None if value is None else int(value)
