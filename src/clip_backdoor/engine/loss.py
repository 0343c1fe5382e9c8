"""Symmetric InfoNCE with label-aware targets, over all processes' features.

Why label-aware: captions made from class labels repeat inside a batch ("a photo of a cat."
twice); plain CLIP targets would push an image away from its own class's caption. Pairs that
share a group (a class name, or an image with several captions) are all positives, with the
target mass spread evenly over them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.loss import gather_features

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learnable temperature at 100


def contrastive_targets(groups: torch.Tensor) -> torch.Tensor:
    """(N, N) rows summing to 1 over the pairs that share a group (the diagonal included)."""
    same = (groups.view(-1, 1) == groups.view(1, -1)).float()
    return same / same.sum(dim=1, keepdim=True)


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropies; ``groups=None`` is CLIP's own loss."""
    logits = logit_scale.exp() * image_features @ text_features.T
    if groups is None:
        targets = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    targets = contrastive_targets(groups.to(logits.device))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def distributed_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    groups: torch.Tensor | None,
    rank: int,
    world_size: int,
) -> torch.Tensor:
    """The loss over the global batch: features gathered from every process with gradient.

    Every process computes the same global loss; DDP's gradient averaging then yields exactly
    the single-process gradient of that global batch.
    """
    if world_size > 1:
        image_features, text_features = gather_features(
            image_features, text_features, gather_with_grad=True, rank=rank, world_size=world_size
        )
        if groups is not None:
            gathered = [torch.empty_like(groups) for _ in range(world_size)]
            torch.distributed.all_gather(gathered, groups)
            groups = torch.cat(gathered)
    return clip_loss(image_features, text_features, logit_scale, groups)
