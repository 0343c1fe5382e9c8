"""Poisoning throughput, side by side in one process (medians of interleaved repeats):

1. poisoning fine-tuning vs the engine's clean (pre)training, both through ``engine.train`` on
   the same model and in-memory data (target >= 0.9x: trigger and caption bookkeeping are cheap);
2. the engine end to end (in-memory images, augmentation, tokenising) vs model-only training
   steps on pre-made batches (target >= 0.95x);
3. the dual-embedding patch optimisation vs a plain forward+backward of the frozen image tower
   (target >= 0.8x).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import clip_backdoor  # noqa: F401  (torchvision shim before open_clip)
from clip_backdoor.attacks.poisoning import PoisonAttack, PoisonedPairs, build_trigger
from clip_backdoor.core import precision
from clip_backdoor.engine.config import TrainingSpec
from clip_backdoor.engine.loss import clip_loss
from clip_backdoor.engine.pairs import ImageTextPairs, PairSource
from clip_backdoor.engine.trainer import train
from clip_backdoor.models import load_clip
from clip_backdoor.triggers.dual_embedding import optimise_patch
from clip_backdoor.triggers.fitting import FitData


def engine_rate(model, data, spec: TrainingSpec) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model, data, spec, 0, Path(tmp), progress=False, log=lambda m: None)
    return result.samples_per_s


def model_only_rate(model, batches, spec: TrainingSpec, mode: str) -> float:
    """The engine's step (loss, backward, clip, AdamW) on pre-made batches: no data work."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr)
    model.train()
    start = time.perf_counter()
    for images, tokens, groups in batches:
        with precision.autocast(mode):
            image_features, text_features, _ = model(images, tokens)
            loss = clip_loss(
                image_features.float(), text_features.float(), model.clip.logit_scale, groups
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return len(batches) * spec.batch_size / (time.perf_counter() - start)


def tower_rate(model, images: torch.Tensor, steps: int, mode: str) -> float:
    """Plain forward + backward of the frozen image tower (gradient w.r.t. the input only)."""
    for param in model.parameters():
        param.requires_grad_(False)
    start = time.perf_counter()
    for _ in range(steps):
        x = images.clone().requires_grad_(True)
        with precision.autocast(mode):
            out = model.encode_image(x).float()
        out.sum().backward()
    return steps * len(images) / (time.perf_counter() - start)


def patch_rate(model, tokenizer, fit_images, targets, batch: int, steps: int, epochs: int) -> float:
    """Images/s of the optimisation over ``epochs`` passes, its one-off feature encoding included
    (a real run makes 8 passes over its images, so that cost is spread as it is here)."""
    trigger = build_trigger("dual_embedding", {}, model.image_size, 0)
    fit = FitData(
        model=model,
        tokenizer=tokenizer,
        target_name="accordion",
        candidates=fit_images,
        target_images=targets,
        target_captions=["a photo of a accordion."],
        classnames=["accordion", "dog", "cat"],
        log=lambda m: None,
    )
    options = dict(n_images=batch * steps, epochs=epochs, batch_size=batch, lr=1e-3, lambda1=500.0)
    start = time.perf_counter()
    optimise_patch(
        trigger,
        fit,
        visual_loss=True,
        captions=fit.target_captions,
        lambda2=1.0,
        eta=1.0,
        **options,
    )
    return epochs * batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini-clip")
    parser.add_argument("--data", default="caltech101")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model, _, tokenizer = load_clip(args.model)
    mode = precision.resolve("auto")
    print(
        f"cpu: {precision.cpu_name()} | threads: {torch.get_num_threads()} | "
        f"native bf16: {precision.native_bf16()} | precision: {mode}"
    )
    spec = TrainingSpec(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=1e-5,
        warmup_steps=1,
        checkpoint_every=10_000,
        num_workers=0,
        precision=mode,
    )
    data = ImageTextPairs([PairSource(args.data)], tokenizer, model.image_size, True, 0)
    attack = PoisonAttack(
        trigger={"name": "badnet"},
        target="accordion",
        ratio=0.01,
        data=[{"name": args.data}],
        training=spec.model_dump(),
    )
    trigger = build_trigger("badnet", {}, model.image_size, 0)
    plan = attack.plan(model, tokenizer, data, trigger, 0, log=lambda m: None)
    poisoned = PoisonedPairs(data, plan, trigger)
    print(f"model {args.model}, data {args.data}: {len(data)} pairs, {len(plan.indices)} poisoned")
    batches = []
    data.set_epoch(0)
    for b in range(args.steps):
        items = [data[i] for i in range(b * args.batch_size, (b + 1) * args.batch_size)]
        images, tokens, groups = (
            torch.stack([torch.as_tensor(x[k]) for x in items]) for k in range(3)
        )
        batches.append((images, tokens, groups))

    rates: dict[str, list[float]] = {"clean engine": [], "poison engine": [], "model only": []}
    engine_rate(model, data, spec)  # warm-up
    for _ in range(args.repeats):  # interleaved
        rates["clean engine"].append(engine_rate(model, data, spec))
        rates["poison engine"].append(engine_rate(model, poisoned, spec))
        rates["model only"].append(model_only_rate(model, batches, spec, mode))
    fit_images = torch.stack([data.plain_image(i) for i in range(args.batch_size * 4)])
    targets = torch.stack([data.plain_image(i) for i in plan.indices[:16]])
    x = fit_images[:64].float() / 255
    patch, tower = [], []
    tower_rate(model, x, 1, mode)  # warm-up
    for _ in range(args.repeats):
        patch.append(patch_rate(model, tokenizer, fit_images, targets, 64, 2, epochs=4))
        tower.append(tower_rate(model, x, 8, mode))

    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio1 = med["poison engine"] / med["clean engine"]
    ratio2 = med["clean engine"] / med["model only"]
    ratio3 = statistics.median(patch) / statistics.median(tower)
    rows = [
        ("engine, clean pairs", med["clean engine"], "-", "-"),
        (
            "engine, 1% BadNet-poisoned pairs",
            med["poison engine"],
            f"{ratio1:.3f}x clean",
            ">= 0.9x",
        ),
        ("model-only steps", med["model only"], f"engine {ratio2:.3f}x of it", ">= 0.95x"),
        ("image tower fwd+bwd (frozen)", statistics.median(tower), "-", "-"),
        (
            "dual-embedding patch optimisation",
            statistics.median(patch),
            f"{ratio3:.3f}x tower",
            ">= 0.8x",
        ),
    ]
    print("\n| measurement | samples/s (median) | ratio | target |")
    print("|---|---|---|---|")
    for name, rate, ratio, target in rows:
        print(f"| {name} | {rate:.1f} | {ratio} | {target} |")


if __name__ == "__main__":
    main()
