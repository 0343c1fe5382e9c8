"""Visual-prompt speed, side by side in one process (medians of interleaved repeats):

1. the explicit block-by-block ViT forward (no hooks) vs open_clip's ``encode_image``
   (target <= 1.1x: RVPT and the decomposition must not pay for running blocks one at a time);
2. one RVPT epoch vs one VPT epoch (target <= 1.2x: the frozen model's features are computed
   once before training, so the repulsion term costs one cosine per image).

mini-CLIP (or --model); the synthetic set at the model's resolution, 16 shots of 12 classes,
batch 32, prompts of the recipe defaults (25 tokens, last 3/4 of the blocks).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_setup import frozen_model

import clip_backdoor  # noqa: F401  (torchvision shim before open_clip)
from clip_backdoor.core import precision
from clip_backdoor.defenses.rvpt import RVPTSpec, tune_visual_prompts
from clip_backdoor.models.image_tower import ImageTower


def forward_times(model, images, mode: str) -> tuple[float, float]:
    tower = ImageTower.of(model)
    normalised = model.normalize(images)
    with torch.no_grad(), precision.autocast(mode):
        start = time.perf_counter()
        model.clip.encode_image(normalised)
        middle = time.perf_counter()
        tower.forward(normalised)
        end = time.perf_counter()
    return middle - start, end - middle


def epoch_time(model, tokenizer, alpha: float, epochs: int = 3) -> float:
    """Seconds per epoch after the first (the log marks each epoch's end)."""
    marks: list[float] = []
    spec = RVPTSpec(
        train={"name": "synthetic", "size": 480, "shots": 16},
        alpha=alpha,
        cache=False,
        training={"epochs": epochs, "views": 2},
    )
    tune_visual_prompts(
        model, tokenizer, spec, 0, log=lambda line: marks.append(time.perf_counter())
    )
    return (marks[-1] - marks[0]) / (epochs - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini-clip")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer, mode = frozen_model(args.model)
    size = model.image_size
    images = torch.rand((64, 3, size, size), generator=torch.Generator().manual_seed(0))
    pairs = [forward_times(model, images, mode) for _ in range(args.repeats)]
    t, o = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    print(f"image tower forward, 64 images at {size} px ({args.model}):")
    print(
        f"  open_clip encode_image {t * 1000:.0f} ms, explicit {o * 1000:.0f} ms: "
        f"{o / t:.2f}x (target <= 1.1x)"
    )
    rvpt, vpt = [], []
    for _ in range(args.repeats):
        rvpt.append(epoch_time(model, tokenizer, alpha=2.0))
        vpt.append(epoch_time(model, tokenizer, alpha=0.0))
    r, v = statistics.median(rvpt), statistics.median(vpt)
    print("prompt-tuning epoch, 192 images (16 shots x 12 classes), batch 32:")
    print(f"  RVPT {r:.2f} s, VPT {v:.2f} s: {r / v:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
