"""Zero-shot classification: a text classifier from class names x templates, then CA/ASR."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.data.classification import prompt_name
from clip_backdoor.evaluation.features import FeatureCache, cached_features
from clip_backdoor.evaluation.metrics import attack_success_rate, topk_accuracy
from clip_backdoor.models.pixel_clip import PixelCLIP
from clip_backdoor.triggers.base import Trigger

TEMPLATE_SETS = {
    "openai": [template("{}") for template in OPENAI_IMAGENET_TEMPLATES],  # CLIP's 80
    "simple": [template("{}") for template in SIMPLE_IMAGENET_TEMPLATES],  # CLIP's 7 best
    "photo": ["a photo of a {}."],
}


def resolve_templates(spec: str | Sequence[str]) -> list[str]:
    """A named set (openai, simple, photo), one template with '{}', or a list of them."""
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            return list(TEMPLATE_SETS[spec])
        spec = [spec]
    templates = list(spec)
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ConfigError(
            f"templates must be one of {', '.join(TEMPLATE_SETS)} or strings containing "
            f"'{{}}' (got {bad[0] if bad else 'none'!r})"
        )
    return templates


@torch.inference_mode()
def text_classifier(
    model: PixelCLIP,
    tokenizer,
    classnames: Sequence[str],
    templates: str | Sequence[str] = "openai",
    batch_size: int = 256,
    precision: str = "auto",
) -> torch.Tensor:
    """(C, D): per class, the mean of normalised template embeddings, renormalised."""
    templates = resolve_templates(templates)
    prompts = [t.format(prompt_name(c)) for c in classnames for t in templates]
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        with precision_mod.autocast(precision, device):
            chunks.append(model.encode_text(tokens).float())
    embeddings = torch.cat(chunks).view(len(classnames), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1).cpu()


Classifier = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


@torch.inference_mode()
def classify(features: torch.Tensor, classifier: Classifier, batch_size: int = 64) -> torch.Tensor:
    """Cosine logits (N, C) of normalised features against classifier rows, or a callable's
    scores (a prompt learner), computed ``batch_size`` images at a time so memory stays flat."""
    if isinstance(classifier, torch.Tensor):
        return features @ classifier.T
    parts = [classifier(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
    return torch.cat(parts).float()


def evaluate_zeroshot(
    model: PixelCLIP,
    tokenizer,
    dataset,
    templates: str | Sequence[str] = "openai",
    trigger: Trigger | None = None,
    target: int | None = None,
    topk: Sequence[int] = (1, 5),
    batch_size: int = 256,
    precision: str = "auto",
    cache: FeatureCache | None = None,
    classifier: Classifier | None = None,
    progress: bool = False,
) -> dict:
    """CA (``ca`` = top-1, ``top{k}``) on clean images; with a trigger, ``asr`` and ``asr_all``.

    ASR needs a target label; images of the target class are left out of ``asr``
    (docs/methods.md 7).
    """
    if trigger is not None and target is None:
        raise ConfigError("a trigger needs a target class to measure ASR")
    if classifier is None:
        classifier = text_classifier(
            model, tokenizer, dataset.classnames, templates, batch_size, precision
        )
    options = {"batch_size": batch_size, "precision": precision, "progress": progress}
    # a classifier of raw features (a linear probe) says so; text classifiers take unit vectors
    options["normalize"] = getattr(classifier, "normalized_features", True)
    features, labels = cached_features(model, dataset, None, cache, **options)
    accuracy = topk_accuracy(classify(features, classifier), labels, sorted({1, *topk}))
    result = {"ca": accuracy[1], "n": len(labels)}
    result.update({f"top{k}": v for k, v in accuracy.items() if k != 1})
    if trigger is not None:
        triggered, labels = cached_features(model, dataset, trigger, cache, **options)
        predictions = classify(triggered, classifier).argmax(dim=1)
        result.update(attack_success_rate(predictions, labels, target))
    return result
