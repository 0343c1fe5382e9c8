"""Zero-shot evaluation: exact CA, ASR excluding target images, feature-cache hits, templates."""

from __future__ import annotations

import pytest
import torch

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.data import TensorSet
from clip_backdoor.evaluation import (
    FeatureCache,
    attack_success_rate,
    encode_images,
    evaluate_zeroshot,
    harmonic_mean,
    resolve_templates,
    text_classifier,
    topk_accuracy,
)
from clip_backdoor.models import load_clip
from clip_backdoor.triggers import Trigger
from clip_backdoor.triggers import get as get_trigger


def distinct_images(n: int, size: int = 32) -> TensorSet:
    torch.manual_seed(0)
    return TensorSet(torch.rand(n, 3, size, size), torch.arange(n), [f"c{i}" for i in range(n)])


def test_ca_is_one_with_the_true_class_features(tiny):
    model, _, tokenizer = tiny
    data = distinct_images(8)
    # The classifier holds each class's own image feature: every image must be classified right.
    features, _ = encode_images(model, data, precision="fp32")
    result = evaluate_zeroshot(model, tokenizer, data, classifier=features, precision="fp32")
    assert result["ca"] == 1.0 and result["n"] == 8
    shuffled = features[torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])]  # swap two classes
    assert evaluate_zeroshot(model, tokenizer, data, classifier=shuffled)["ca"] == 0.75


def test_topk_accuracy_by_hand():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1]])
    labels = torch.tensor([0, 1, 2])
    assert topk_accuracy(logits, labels, (1, 2, 5)) == {1: 1 / 3, 2: 2 / 3, 5: 1.0}


def test_asr_excludes_target_class_images():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    # only the target-class images are predicted as the target
    result = attack_success_rate(torch.tensor([0, 0, 1, 1, 2, 2]), labels, target=0)
    assert result == {"asr": 0.0, "asr_all": 2 / 6, "asr_n": 4}
    result = attack_success_rate(torch.tensor([1, 1, 0, 0, 0, 2]), labels, target=0)
    assert result["asr"] == 3 / 4 and result["asr_all"] == 3 / 6


class PasteImage(Trigger):
    """Replaces every image by one fixed image: a perfect trigger for that image's class."""

    name = "paste"

    def __init__(self, image: torch.Tensor) -> None:
        self.image = image

    def apply(self, images, generator=None):
        return self.image.expand_as(images).clone()

    def state_dict(self):
        return {"image": self.image}


def test_asr_through_evaluation(tiny):
    model, _, tokenizer = tiny
    data = distinct_images(6)
    classifier, _ = encode_images(model, data)
    trigger = PasteImage(data.images[2])
    result = evaluate_zeroshot(
        model, tokenizer, data, classifier=classifier, trigger=trigger, target=2
    )
    assert result["asr"] == 1.0 and result["asr_all"] == 1.0 and result["asr_n"] == 5
    identity = get_trigger("identity")()
    clean = evaluate_zeroshot(
        model, tokenizer, data, classifier=classifier, trigger=identity, target=2
    )
    assert clean["asr"] == 0.0 and clean["asr_all"] == 1 / 6  # only image 2 is predicted as 2
    with pytest.raises(ConfigError, match="needs a target"):
        evaluate_zeroshot(model, tokenizer, data, classifier=classifier, trigger=identity)


class CountingEncoder:
    """Counts images passed to the image tower."""

    def __init__(self, model) -> None:
        self.model, self.images = model, 0
        self.original = model.clip.encode_image

    def __enter__(self):
        def counted(x, *args, **kwargs):
            self.images += len(x)
            return self.original(x, *args, **kwargs)

        self.model.clip.encode_image = counted
        return self

    def __exit__(self, *exc):
        del self.model.clip.encode_image


def test_feature_cache_skips_the_encoder_on_a_second_evaluation(tmp_path):
    model, _, tokenizer = load_clip("mini-tiny")
    data = distinct_images(10)
    cache = FeatureCache(tmp_path)
    trigger = PasteImage(data.images[0])
    options = {"templates": "photo", "cache": cache, "trigger": trigger, "target": 0}
    with CountingEncoder(model) as counter:
        first = evaluate_zeroshot(model, tokenizer, data, **options)
        assert counter.images == 20 and cache.misses == 2
        second = evaluate_zeroshot(model, tokenizer, data, **options)
        assert counter.images == 20 and cache.hits == 2  # nothing re-encoded
        assert first == second
        with torch.no_grad():
            model.clip.visual.proj.mul_(2.0)  # new weights: new key
        evaluate_zeroshot(model, tokenizer, data, **options)
        assert counter.images == 40 and cache.misses == 4


def test_text_classifier_averages_normalised_templates(tiny):
    model, _, tokenizer = tiny
    two = text_classifier(model, tokenizer, ["car_side"], ["a {}.", "the {}!"], precision="fp32")
    single = [
        text_classifier(model, tokenizer, ["car side"], [t], precision="fp32")
        for t in ["a {}.", "the {}!"]
    ]
    expected = torch.nn.functional.normalize(single[0] + single[1], dim=-1)
    assert torch.allclose(two, expected, atol=1e-6)
    assert torch.allclose(two.norm(dim=-1), torch.ones(1))


def test_templates_and_harmonic_mean():
    assert len(resolve_templates("openai")) == 80
    assert resolve_templates("a sketch of {}.") == ["a sketch of {}."]
    with pytest.raises(ConfigError, match="containing"):
        resolve_templates("no placeholder")
    assert harmonic_mean(0.8, 0.4) == pytest.approx(2 * 0.32 / 1.2)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_ca_is_top1_even_when_topk_omits_one(tiny):
    model, _, tokenizer = tiny
    data = distinct_images(8)
    features, _ = encode_images(model, data, precision="fp32")
    shuffled = features[torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])]
    result = evaluate_zeroshot(model, tokenizer, data, classifier=shuffled, topk=(8,))
    assert result["ca"] == 0.75 and result["top8"] == 1.0  # top-8 of 8 classes is certain


def test_model_fingerprint_follows_weight_changes():
    from clip_backdoor.evaluation.features import model_fingerprint

    model = load_clip("mini-tiny").model
    first = model_fingerprint(model)
    assert model_fingerprint(model) == first
    with torch.no_grad():
        model.clip.ln_final.weight.add_(1.0)  # in place
    second = model_fingerprint(model)
    assert second != first
    model.clip.ln_final.weight = torch.nn.Parameter(torch.zeros_like(model.clip.ln_final.weight))
    assert model_fingerprint(model) not in (first, second)  # replaced
