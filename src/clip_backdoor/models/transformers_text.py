"""transformers' CLIP and SigLIP text models fed token embeddings, as ``TextTower`` does.

Why: prompt learners (CoOp, CoCoOp, the trigger-aware attack) replace token embeddings by learnt
vectors. This adapter follows transformers' own text forward (token + position embeddings, the
encoder layers, ``final_layer_norm``, then CLIP's end token and ``text_projection`` or SigLIP's
last token and ``head``) and equals it (``tests/test_towers.py``). CLIP's layers are causal, so
the sequence is cut after the longest prompt's end token, as for open_clip; SigLIP's attend to
every token and read the last, so it runs the whole context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clip_backdoor.models.text_tower import TextTower
from clip_backdoor.models.transformers_tower import transformers_head_outputs


def is_transformers_text(text: nn.Module | None) -> bool:
    model = getattr(text, "model", None)
    return hasattr(model, "embeddings") and hasattr(model, "final_layer_norm")


@dataclass
class TransformersTextTower(TextTower):
    """``module`` is ``transformers_clip._Tower``: ``.model`` the text model, ``.proj``."""

    @classmethod
    def of_transformers(cls, text: nn.Module) -> TransformersTextTower:
        model = text.model
        clip = hasattr(model, "eos_token_id")  # CLIP reads its end token; SigLIP the last
        eos = int(model.eos_token_id) if clip else None
        pool = ("argmax" if eos == 2 else "eos") if clip else "last"
        return cls(text, pool, eos)

    @property
    def model(self) -> nn.Module:
        return self.module.model

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    @property
    def causal(self) -> bool:
        return self.pool_type != "last"

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings.token_embedding(tokens)

    def encode_embeddings(self, embeddings: torch.Tensor, pooled_at: torch.Tensor) -> torch.Tensor:
        model = self.model
        length = embeddings.shape[1]
        x = embeddings + model.embeddings.position_embedding.weight[:length].to(embeddings.dtype)
        mask = None
        if self.causal:
            upper = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            mask = torch.zeros(length, length, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(upper, float("-inf"))
        for layer in model.encoder.layers:
            heads, _, _ = transformers_head_outputs(layer.self_attn, layer.layer_norm1(x), mask)
            x = x + heads.sum(dim=2) + layer.self_attn.out_proj.bias.to(x.dtype)
            x = x + layer.mlp(layer.layer_norm2(x))
        x = model.final_layer_norm(x)
        x = x[torch.arange(x.shape[0], device=x.device), pooled_at.to(x.device)]
        if getattr(model, "head", None) is not None:
            x = model.head(x)
        return x if self.module.proj is None else self.module.proj(x)
