"""Contrastive training engine: loss, pairs, sampler, checkpoints, trainer, pretrain pipeline."""

from clip_backdoor.engine.loss import MAX_LOGIT_SCALE, clip_loss, contrastive_targets
from clip_backdoor.engine.pairs import ImageTextPairs, PairSource
from clip_backdoor.engine.trainer import TrainResult, train

__all__ = [
    "MAX_LOGIT_SCALE",
    "ImageTextPairs",
    "PairSource",
    "TrainResult",
    "clip_loss",
    "contrastive_targets",
    "train",
]
