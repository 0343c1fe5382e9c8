"""Learnt text prompts for a frozen CLIP: the shared part of CoOp and CoCoOp (docs/methods.md 3.1).

A class prompt is [SOS][v_1..v_M][name tokens][.][EOS] (the class token at the end; front and
middle as options). Everything but the context vectors is a fixed embedding rebuilt from the
current class list, so one learner classifies any class list. Sequences are cut after the longest
prompt's EOS (exact under the causal mask), which is most of the text tower's cost saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.data.classification import prompt_name
from clip_backdoor.models.pixel_clip import PixelCLIP
from clip_backdoor.models.text_tower import TextTower

Position = Literal["end", "middle", "front"]
PLACEHOLDER = "X"
PLACEHOLDERS = (PLACEHOLDER, "a", "the")  # a tokenizer that splits "X" keeps one of these whole


@dataclass
class ClassPrompts:
    """Fixed parts of every class prompt, with the slots the context vectors fill."""

    classnames: list[str]
    fixed: torch.Tensor  # (K, L, d) token embeddings; context slots hold placeholders
    slots: torch.Tensor  # (K, M) position of context vector j in class k's sequence
    pooled_at: torch.Tensor  # (K,) EOS position

    def __getitem__(self, classes: slice) -> ClassPrompts:
        return ClassPrompts(
            self.classnames[classes],
            self.fixed[classes],
            self.slots[classes],
            self.pooled_at[classes],
        )


@dataclass(frozen=True)
class TokenLayout:
    """Where a family's tokenizer puts a prompt: ``start`` leading special tokens (CLIP's SOS;
    none for SigLIP), the placeholder's id (CoOp's "X", or the first candidate the tokenizer
    keeps as one token), the end token's id, and how many tokens the closing "." takes (none
    where the tokenizer strips punctuation, as SigLIP's does)."""

    word: str
    start: int
    placeholder: int
    end: int
    period: int

    @classmethod
    def of(cls, tokenizer) -> TokenLayout:
        empty = tokenizer([""])[0].tolist()  # [SOS] EOS ...: the end token and what precedes it
        start = 1 if tokenizer(["Y"])[0][0] == empty[0] and empty[0] != empty[1] else 0
        end = empty[start]
        for word in PLACEHOLDERS:
            ids = tokenizer([word])[0].tolist()
            if ids[start + 1] == end:  # one token
                period = tokenizer([f"{word}."])[0].tolist().index(end) - (start + 1)
                return cls(word, start, ids[start], end, period)
        raise ConfigError(f"the tokenizer splits every placeholder ({', '.join(PLACEHOLDERS)})")


def _arrange(
    ids: list[int], n_ctx: int, n_name: int, position: Position, start: int = 1
) -> list[int]:
    """Reorder [SOS][ctx][name][rest] for the class-token position (CoOp's three options)."""
    sos, ctx, name, rest = (
        ids[:start],
        ids[start : start + n_ctx],
        ids[start + n_ctx : start + n_ctx + n_name],
        ids[start + n_ctx + n_name :],
    )
    if position == "end":
        return sos + ctx + name + rest
    if position == "front":
        return sos + name + ctx + rest
    half = n_ctx // 2
    return sos + ctx[:half] + name + ctx[half:] + rest


def build_class_prompts(
    tower: TextTower,
    tokenizer,
    classnames: Sequence[str],
    n_ctx: int,
    position: Position,
    trim: bool = True,
) -> ClassPrompts:
    layout = TokenLayout.of(tokenizer)
    texts = [f"{' '.join([layout.word] * n_ctx)} {prompt_name(c)}." for c in classnames]
    tokens = tokenizer(texts)
    start = layout.start
    arranged, slots = [], []
    for row in tokens.tolist():
        if row[start : start + n_ctx] != [layout.placeholder] * n_ctx:
            raise ConfigError("the tokenizer does not keep the context placeholders apart")
        if layout.end not in row[start + n_ctx :]:
            raise ConfigError("a class prompt is longer than the tokenizer's context")
        end = row.index(layout.end, start + n_ctx)
        n_name = max(0, end - start - n_ctx - layout.period)  # between the context and "."
        order = _arrange(row, n_ctx, n_name, position, start)
        arranged.append(order)
        ctx_at = _ctx_positions(n_ctx, n_name, position, start)
        slots.append([i for i, _ in enumerate(order) if i in ctx_at])
    arranged_tokens = torch.tensor(arranged, dtype=tokens.dtype)
    pooled_at = tower.pool_index(arranged_tokens)
    length = tower.needed_length(pooled_at) if trim else tower.context_length
    device = tower.device
    with torch.no_grad():
        fixed = tower.embed(arranged_tokens[:, :length].to(device)).detach()
    return ClassPrompts(list(classnames), fixed, torch.tensor(slots), pooled_at)


def _ctx_positions(n_ctx: int, n_name: int, position: Position, start: int = 1) -> set[int]:
    if position == "end":
        return set(range(start, start + n_ctx))
    if position == "front":
        return set(range(start + n_name, start + n_name + n_ctx))
    half = n_ctx // 2
    return set(range(start, start + half)) | set(
        range(start + half + n_name, start + n_ctx + n_name)
    )


def fill_context(prompts: ClassPrompts, ctx: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the context in place: ctx (M, d) -> (K, L, d); (B, M, d) ->
    (B, K, L, d), one prompt set per image (CoCoOp)."""
    fixed, slots = prompts.fixed.to(ctx), prompts.slots.to(ctx.device)
    k, m, d = slots.shape[0], slots.shape[1], fixed.shape[-1]
    if ctx.dim() == 2:
        index = slots[..., None].expand(k, m, d)
        return fixed.scatter(1, index, ctx[None].expand(k, m, d))
    b = ctx.shape[0]
    index = slots[None, ..., None].expand(b, k, m, d)
    filled = fixed[None].expand(b, -1, -1, -1)
    return filled.scatter(2, index, ctx[:, None].expand(b, k, m, d))


class PromptLearner(nn.Module):
    """Context vectors (M, d) and the frozen CLIP they prompt; subclasses shift them per image."""

    kind = "prompt"

    def __init__(
        self,
        model: PixelCLIP,
        tokenizer,
        *,
        n_ctx: int = 4,
        init: str | None = "a photo of a",
        position: Position = "end",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if position not in ("end", "middle", "front"):
            raise ConfigError(f"class token position must be end, middle or front, not {position}")
        self.tower = TextTower.of(model.clip)
        self.tokenizer = tokenizer
        self.position = position
        self.init = init
        width = self.tower.width
        if init:  # the init text's tokens, between the start token (if any) and the end token
            layout, ids = TokenLayout.of(tokenizer), tokenizer([init])[0]
            n_ctx = ids.tolist().index(layout.end, layout.start) - layout.start
            context = ids[layout.start : layout.start + n_ctx].to(self._device())
            with torch.no_grad():
                ctx = self.tower.embed(context).detach().clone()
        else:
            generator = torch.Generator().manual_seed(seed)
            ctx = torch.randn((n_ctx, width), generator=generator) * 0.02
        if n_ctx < 1:
            raise ConfigError("a prompt learner needs at least one context vector")
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx.float())
        self._prompts: ClassPrompts | None = None
        self._prompts_key: tuple = ()
        self.trim = True  # run the text tower only up to the longest prompt (exact; see base)

    def _device(self) -> torch.device:
        return self.tower.device

    @property
    def config(self) -> dict:
        return {
            "kind": self.kind,
            "n_ctx": self.n_ctx,
            "init": self.init,
            "position": self.position,
            "width": self.tower.width,
        }

    def class_prompts(self, classnames: Sequence[str]) -> ClassPrompts:
        """The fixed parts for ``classnames`` (rebuilt only when the list changes)."""
        key = (tuple(classnames), self.trim)
        if self._prompts is None or self._prompts_key != key:
            self._prompts = build_class_prompts(
                self.tower, self.tokenizer, classnames, self.n_ctx, self.position, self.trim
            )
            self._prompts_key = key
        return self._prompts

    def context(self, image_features: torch.Tensor | None) -> torch.Tensor:
        """(M, d) context, or (B, M, d) when it depends on the image (CoCoOp)."""
        return self.ctx

    def text_features(
        self, classnames: Sequence[str], image_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalised class features: (K, D), or (B, K, D) for an image-conditioned learner."""
        return self.encode(self.class_prompts(classnames), self.context(image_features))

    def encode(self, prompts: ClassPrompts, ctx: torch.Tensor) -> torch.Tensor:
        embeddings = fill_context(prompts, ctx)
        shape = embeddings.shape
        pooled = prompts.pooled_at.repeat(shape[0] if ctx.dim() == 3 else 1)
        flat = embeddings.reshape(-1, *shape[-2:])
        features = self.tower.encode_embeddings(flat, pooled)
        return F.normalize(features.float(), dim=-1).reshape(*shape[:-2], -1)

    def logits(
        self, image_features: torch.Tensor, classnames: Sequence[str], chunk: int | None = None
    ) -> torch.Tensor:
        """Cosine scores (B, K) of normalised image features against the class prompts.

        ``chunk`` classes at a time for an image-conditioned learner: its B x K prompts would
        otherwise all be in memory at once.
        """
        prompts = self.class_prompts(classnames)
        ctx = self.context(image_features)
        if ctx.dim() == 2:
            return image_features @ self.encode(prompts, ctx).T
        step = chunk or len(classnames)
        scores = [
            torch.einsum("bd,bkd->bk", image_features, self.encode(prompts[i : i + step], ctx))
            for i in range(0, len(classnames), step)
        ]
        return torch.cat(scores, dim=1)

    def classifier(self, classnames: Sequence[str], chunk: int = 16):
        """A callable for ``evaluate_zeroshot(classifier=...)``: features (N, D) -> scores."""
        return lambda features: self.logits(features, classnames, chunk)
