"""How visible is each trigger to a clean model, before any poisoning run?

A poisoned fine-tuning run can only tie a global trigger to the target if the image tower tells
triggered images from clean ones. This measures that on the clean model: features of N test
images, clean and triggered; a logistic probe (scikit-learn) trained on 2/3 of the images and
scored on the rest (0.5 = invisible, 1.0 = perfectly separable), the mean feature cosine, and
the PSNR. It chose Blended's noise grid (recipes/poisoning/blended.yaml) and explains why WaNet is
not learnt on mini-CLIP. A local patch (BadNet) is learnt whatever its probe score: one token
changes, so the probe under-rates it.

    python benchmarks/trigger_visibility.py [--seeds 0 1] [--out results/trigger_visibility.md]
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

import clip_backdoor  # noqa: F401  (torchvision shim before open_clip)
from clip_backdoor.attacks.poisoning import build_trigger
from clip_backdoor.data.classification import ClassificationSet
from clip_backdoor.evaluation.image_quality import psnr
from clip_backdoor.models import load_clip

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"

CANDIDATES = {
    "badnet (bottom right)": ("badnet", {"position": "bottom_right"}),
    "blended (per-pixel noise)": ("blended", {"alpha": 0.2}),
    "blended (noise 32x32)": ("blended", {"alpha": 0.2, "noise_size": 32}),
    "blended (noise 16x16)": ("blended", {"alpha": 0.2, "noise_size": 16}),
    "blended (noise 8x8)": ("blended", {"alpha": 0.2, "noise_size": 8}),
    "blended (skimage:chelsea)": ("blended", {"alpha": 0.2, "image_file": "skimage:chelsea"}),
    "sig": ("sig", {"delta": 0.23529, "frequency": 6}),
    "wanet k=4 s=2": ("wanet", {"k": 4, "s": 2.0}),
    "wanet k=4 s=8": ("wanet", {"k": 4, "s": 8.0}),
    "wanet k=16 s=4": ("wanet", {"k": 16, "s": 4.0}),
    "wanet_clipref s=1": ("wanet_clipref", {"s": 1.0}),
}


@torch.inference_mode()
def features(model, images: torch.Tensor, batch: int = 200) -> torch.Tensor:
    parts = [
        model.encode_image(images[i : i + batch]).float() for i in range(0, len(images), batch)
    ]
    return F.normalize(torch.cat(parts), dim=-1)


def probe_accuracy(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """Held-out accuracy of a logistic probe telling triggered from clean features."""
    n = len(clean)
    split = 2 * n // 3
    x = torch.cat([clean, triggered]).numpy()
    y = np.r_[np.zeros(n), np.ones(n)]
    train = np.r_[np.arange(split), n + np.arange(split)]
    test = np.r_[np.arange(split, n), n + np.arange(split, n)]
    probe = LogisticRegression(max_iter=2000, C=10).fit(x[train], y[train])
    return float(probe.score(x[test], y[test]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini-clip")
    parser.add_argument("--data", default=str(SHARED / "caltech101"))
    parser.add_argument("--n", type=int, default=600, help="test images (seeded draw)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="trigger seeds")
    parser.add_argument("--out", type=Path, help="also write the table as markdown here")
    args = parser.parse_args()
    model, preprocess, _ = load_clip(args.model)
    data = ClassificationSet(args.data, "test", transform=preprocess)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: args.n]
    images = torch.stack([data[i][0] for i in order.tolist()])
    clean = features(model, images)
    lines = [
        f"{args.model}, {data.name} test, {len(images)} images; probe: 2/3 train, 1/3 held out.",
        "",
        "| trigger | seed | probe accuracy | mean cos(f, f') | PSNR dB |",
        "|---|---|---|---|---|",
    ]
    print("\n".join(lines))
    for label, (name, params) in CANDIDATES.items():
        for seed in args.seeds:
            trigger = build_trigger(name, params, model.image_size, seed)
            triggered = trigger.apply(images, torch.Generator().manual_seed(seed))
            moved = features(model, triggered)
            cosine = float((clean * moved).sum(-1).mean())
            quality = psnr(images, triggered)
            lines.append(
                f"| {label} | {seed} | {probe_accuracy(clean, moved):.3f} | {cosine:.3f} "
                f"| {quality:.1f} |"
            )
            print(lines[-1])
    if args.out:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        seeds = " ".join(map(str, args.seeds))
        header = [
            f"# Trigger visibility to the clean {args.model} (before any poisoning)",
            "",
            f"Written by `python benchmarks/trigger_visibility.py --seeds {seeds} --out "
            f"{args.out}` at commit `{commit or '?'}`. A logistic probe on the clean model's "
            "normalised image features tells triggered from clean test images (0.5: invisible). "
            "A local patch (BadNet) is learnt whatever its score: one token changes.",
            "",
        ]
        args.out.write_text("\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
