"""Zero-shot evaluation, metrics and the feature cache."""

from clip_backdoor.evaluation.features import FeatureCache, cached_features, encode_images
from clip_backdoor.evaluation.metrics import attack_success_rate, harmonic_mean, topk_accuracy
from clip_backdoor.evaluation.zeroshot import (
    TEMPLATE_SETS,
    classify,
    evaluate_zeroshot,
    resolve_templates,
    text_classifier,
)

__all__ = [
    "TEMPLATE_SETS",
    "FeatureCache",
    "attack_success_rate",
    "cached_features",
    "classify",
    "encode_images",
    "evaluate_zeroshot",
    "harmonic_mean",
    "resolve_templates",
    "text_classifier",
    "topk_accuracy",
]
