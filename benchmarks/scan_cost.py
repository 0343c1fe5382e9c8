"""What a scan spends, per model, scanner and budget: ``results/scan_cost.csv``
(``model,scanner,budget,image_passes,seconds,device,cpu,precision``).

Image passes are counted by the scanners themselves (forward and backward through the image
tower, plus forward only); seconds are wall time on this machine. A full-size model runs on
untrained weights (its cost does not depend on them):

    python benchmarks/scan_cost.py --model mini-clip --budgets fast,default
    python benchmarks/scan_cost.py --model ViT-B-32 --budgets fast
    python benchmarks/scan_cost.py --classes    # 10 vs 100 classes, the same images (<= 2x)

Rows of the same (model, scanner, budget, device) are replaced, the others kept.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from bench_setup import frozen_model

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.scanning.base import ScanSubject
from clip_backdoor.scanning.scan import build_scanners
from clip_backdoor.scanning.subject import scan_images

FIELDS = ["model", "scanner", "budget", "image_passes", "seconds", "device", "cpu", "precision"]


def images_of(model, name: str, count: int):
    return scan_images(name, "train", count, model.image_size, model.pixel_transform(), 0)


def passes(finding) -> int:
    counted = finding.evidence.get("image_passes", {})
    return int(sum(counted.values()))


def record(rows: list[dict], path: Path) -> None:
    kept = []
    if path.is_file():
        with path.open() as handle:
            kept = list(csv.DictReader(handle))
    key = ("model", "scanner", "budget", "device")
    fresh = {tuple(r[k] for k in key) for r in rows}
    kept = [r for r in kept if tuple(r[k] for k in key) not in fresh]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(kept + rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini-clip")
    parser.add_argument("--budgets", default="fast,default")
    parser.add_argument("--scanners", default="patch_search")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--classes", action="store_true", help="10 vs 100 classes instead")
    parser.add_argument("--out", default="results/scan_cost.csv")
    args = parser.parse_args()
    model, tokenizer, mode = frozen_model(args.model)
    model = model.to(args.device)
    subject = ScanSubject(model.eval(), tokenizer, args.model)
    caltech = images_of(model, "caltech101", args.images)
    if args.classes:
        for name in args.scanners.split(","):
            (scanner,) = build_scanners([name], budget="fast")
            few = scanner.scan(subject, images_of(model, "cifar10", args.images), seed=0)
            many = scanner.scan(subject, caltech, seed=0)
            print(
                f"{name} (fast): 10 classes {few.seconds:.1f} s, {passes(few)} passes; "
                f"100 classes {many.seconds:.1f} s, {passes(many)} passes: "
                f"{many.seconds / few.seconds:.2f}x (target <= 2x)"
            )
        return
    rows = []
    for budget in args.budgets.split(","):
        for scanner in build_scanners(args.scanners.split(","), budget=budget):
            finding = scanner.scan(subject, caltech, seed=0)
            row = {
                "model": args.model,
                "scanner": finding.scanner,
                "budget": budget,
                "image_passes": passes(finding),
                "seconds": round(finding.seconds, 1),
                "device": args.device,
                "cpu": precision_mod.cpu_name(),
                "precision": mode,
            }
            print(row, flush=True)
            rows.append(row)
    record(rows, Path(args.out))


if __name__ == "__main__":
    main()
