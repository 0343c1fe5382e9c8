"""Triggers fitted on the clean model: the optimised patches and the label-consistent PGD."""

from __future__ import annotations

import torch

from clip_backdoor.attacks.poisoning import build_trigger
from clip_backdoor.data import SyntheticShapes
from clip_backdoor.evaluation import text_classifier
from clip_backdoor.triggers.fitting import FitData


def fit_data(tiny, n: int = 128) -> FitData:
    model, _, tokenizer = tiny
    shapes = SyntheticShapes("train", size=n, image_size=32)
    images = torch.stack([(shapes[i][0] * 255).round().to(torch.uint8) for i in range(n)])
    labels = torch.tensor(shapes.targets)
    return FitData(
        model=model,
        tokenizer=tokenizer,
        target_name="red circle",
        candidates=images[labels != 0],
        target_images=images[labels == 0],
        target_captions=["a photo of a red circle.", "art of the red circle."],
        classnames=shapes.classnames,
        seed=0,
        precision="fp32",
        log=lambda message: None,
    )


def test_dual_embedding_and_trojvqa_patches_lower_their_loss(tiny):
    fit = fit_data(tiny)
    for name in ("dual_embedding", "trojvqa"):
        params = {"n_images": 96, "epochs": 6, "batch_size": 32, "lr": 0.05}
        trigger = build_trigger(name, params, image_size=32, seed=0)
        before = trigger.patch.clone()
        trigger.fit(fit)
        assert trigger.history[-1] < trigger.history[0], (name, trigger.history)
        assert not torch.equal(before, trigger.patch)
        assert trigger.patch.min() >= 0 and trigger.patch.max() <= 1
    for param in fit.model.parameters():
        assert param.grad is None  # the clean model was only read


def test_label_consistent_pgd_stays_in_the_ball_and_hurts_the_true_class(tiny):
    model, _, tokenizer = tiny
    fit = fit_data(tiny)
    trigger = build_trigger("label_consistent", {"steps": 10}, image_size=32, seed=0)
    classifier = text_classifier(model, tokenizer, fit.classnames, "photo", precision="fp32")
    images = fit.target_images[:8]
    hard = trigger.harden(model, images, classifier, label=0, precision="fp32")
    clean = images.float() / 255
    assert (hard - clean).abs().max() <= 8 / 255 + 1e-6 and hard.min() >= 0 and hard.max() <= 1
    scale = model.logit_scale.exp().item()
    with torch.no_grad():
        p_clean = (scale * model.encode_image(clean) @ classifier.T).softmax(1)[:, 0]
        p_hard = (scale * model.encode_image(hard) @ classifier.T).softmax(1)[:, 0]
    assert p_hard.mean() < p_clean.mean()  # PGD moved the images away from their true class
    for param in model.parameters():
        param.requires_grad_(True)
