"""The families' objectives over all processes' features: CLIP's symmetric InfoNCE and SigLIP's
sigmoid loss (with its learnt logit bias), both with label-aware targets.

Why the model's own objective: a SigLIP fine-tuned (poisoned, FT, CleanCLIP) with InfoNCE would
optimise what it was never trained on, and its bias would not move.

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

from clip_backdoor.core.errors import ConfigError

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learnable temperature at 100 (SigLIP: none)
OBJECTIVES = ("infonce", "sigmoid")


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


def sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP's loss: every pair an independent binary decision, positives those sharing a group
    (``None``: the diagonal), summed and divided by the batch size (as big_vision and open_clip)."""
    logits = logit_scale.exp() * image_features @ text_features.T + logit_bias
    if groups is None:
        same = torch.eye(len(logits), device=logits.device, dtype=logits.dtype)
    else:
        groups = groups.to(logits.device)
        same = (groups.view(-1, 1) == groups.view(1, -1)).to(logits.dtype)
    return -F.logsigmoid((2 * same - 1) * logits).sum() / len(logits)


def gather_batch(image_features, text_features, groups, rank: int, world_size: int):
    """Every process's features (with gradient) and groups, in rank order."""
    if world_size == 1:
        return image_features, text_features, groups
    image_features, text_features = gather_features(
        image_features, text_features, gather_with_grad=True, rank=rank, world_size=world_size
    )
    if groups is not None:
        gathered = [torch.empty_like(groups) for _ in range(world_size)]
        torch.distributed.all_gather(gathered, groups)
        groups = torch.cat(gathered)
    return image_features, text_features, groups


def pair_loss(
    objective: str,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    groups: torch.Tensor | None,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """The objective over the global batch (features gathered from every process with
    gradient: every process computes the same loss, and DDP's averaging gives the
    single-process gradient of that batch)."""
    image_features, text_features, groups = gather_batch(
        image_features, text_features, groups, rank, world_size
    )
    if objective == "sigmoid":
        if logit_bias is None:
            raise ConfigError("the sigmoid loss needs a model with a logit bias (SigLIP)")
        return sigmoid_loss(image_features, text_features, logit_scale, logit_bias, groups)
    return clip_loss(image_features, text_features, logit_scale, groups)


def resolve_objective(model, requested: str = "auto") -> str:
    """The model's own objective ('auto'), or the one a recipe asks for."""
    if requested == "auto":
        return model.objective
    if requested not in OBJECTIVES:
        raise ConfigError(f"unknown loss '{requested}' (auto, {', '.join(OBJECTIVES)})")
    return requested


def distributed_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    groups: torch.Tensor | None,
    rank: int,
    world_size: int,
) -> torch.Tensor:
    """InfoNCE over the global batch (``pair_loss`` with CLIP's objective)."""
    return pair_loss(
        "infonce", image_features, text_features, logit_scale, None, groups, rank, world_size
    )
