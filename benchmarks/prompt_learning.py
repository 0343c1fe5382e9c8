"""Prompt-learning speed, side by side in one process (medians of interleaved repeats):

1. one CoOp epoch on cached view features vs the same epoch re-encoding every batch's images
   (target >= 5x: the frozen image tower is the cost the cache removes);
2. one CoCoOp training step with the text tower run only up to the longest prompt vs the model's
   full context (target >= 2x).

mini-CLIP (or --model), 50 classes (caltech101's base half), 16 shots, CoOp batch 32, CoCoOp
batch 8; random pixels (speed does not depend on content).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_setup import frozen_model

import clip_backdoor  # noqa: F401  (torchvision shim before open_clip)
from clip_backdoor.core import precision
from clip_backdoor.prompts import get
from clip_backdoor.prompts.training import (
    AugmentedViews,
    PromptTrainingSpec,
    prompt_loss,
    run_epochs,
    view_features,
)

CLASSES = [
    "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplane", "anchor", "ant", "barrel",
    "bass", "beaver", "binocular", "bonsai", "brain", "brontosaurus", "buddha", "butterfly",
    "camera", "cannon", "car_side", "ceiling_fan", "cellphone", "chair", "chandelier",
    "cougar_body", "cougar_face", "crab", "crayfish", "crocodile", "crocodile_head", "cup",
    "dalmatian", "dollar_bill", "dolphin", "dragonfly", "electric_guitar", "elephant", "emu",
    "euphonium", "ewer", "ferry", "flamingo", "flamingo_head", "garfield", "gerenuk",
    "gramophone", "grand_piano", "hawksbill", "headphone", "hedgehog", "helicopter",
]  # fmt: skip


def coop_epoch(model, learner, images, labels, mode: str, cached: bool, table) -> float:
    spec = PromptTrainingSpec(epochs=1, batch_size=32, warmup_epochs=0, views=2)
    views = AugmentedViews(images, spec.views, 0)

    def batch_loss(items, view, epoch):
        if cached:
            features = table[items, view]
        else:
            with torch.no_grad(), precision.autocast(mode):
                features = model.encode_image(views.batch(items.tolist(), view.tolist())).float()
        return prompt_loss(learner, model, features, labels[items], CLASSES)

    start = time.perf_counter()
    run_epochs(list(learner.parameters()), spec, len(images), views.count, 0, batch_loss)
    return time.perf_counter() - start


def cocoop_step(model, learner, features, labels, trim: bool) -> float:
    learner.trim = trim
    optimizer = torch.optim.SGD(learner.parameters(), lr=1e-3)
    start = time.perf_counter()
    loss = prompt_loss(learner, model, features, labels, CLASSES)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini-clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shots", type=int, default=16)
    args = parser.parse_args()
    model, tokenizer, mode = frozen_model(args.model)
    generator = torch.Generator().manual_seed(0)
    n = args.shots * len(CLASSES)
    size = model.image_size
    images = torch.rand((n, 3, size, size), generator=generator)
    labels = torch.arange(len(CLASSES)).repeat_interleave(args.shots)
    views = AugmentedViews(images, 2, 0)
    start = time.perf_counter()
    table = view_features(model, views, precision=mode)
    encode_s = time.perf_counter() - start
    coop = get("coop")(model, tokenizer)
    cached, uncached = [], []
    for _ in range(args.repeats):
        cached.append(coop_epoch(model, coop, images, labels, mode, True, table))
        uncached.append(coop_epoch(model, coop, images, labels, mode, False, None))
    c, u = statistics.median(cached), statistics.median(uncached)
    print(f"CoOp epoch, {n} images, {len(CLASSES)} classes, batch 32:")
    print(f"  cached view features {c:.2f} s, re-encoding {u:.2f} s: {u / c:.1f}x (target >= 5x)")
    print(f"  (encoding 2 views once: {encode_s:.1f} s, paid once for all epochs)")

    cocoop = get("cocoop")(model, tokenizer)
    features = table[:8, 0].clone()  # out of inference mode: the step backpropagates
    batch_labels = labels[:8]
    trimmed, full = [], []
    for _ in range(args.repeats):
        trimmed.append(cocoop_step(model, cocoop, features, batch_labels, trim=True))
        full.append(cocoop_step(model, cocoop, features, batch_labels, trim=False))
    t, f = statistics.median(trimmed), statistics.median(full)
    cocoop.trim = True
    length = cocoop.class_prompts(CLASSES).fixed.shape[1]
    cocoop.trim = False
    context = cocoop.class_prompts(CLASSES).fixed.shape[1]
    print(f"CoCoOp step, 8 images x {len(CLASSES)} classes ({8 * len(CLASSES)} prompts):")
    print(
        f"  trimmed context ({length} tokens) {t * 1000:.0f} ms, full ({context}) "
        f"{f * 1000:.0f} ms: {f / t:.1f}x (target >= 2x)"
    )


if __name__ == "__main__":
    main()
