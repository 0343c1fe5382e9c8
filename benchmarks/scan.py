"""Model-scan cost, measured in one process on mini-CLIP (or --model):

1. seconds per scanner at its defaults on 256 seeded caltech101 train images, and the whole
   scan (target: under 10 minutes on 2 cores);
2. ``target_search`` at 10 classes (cifar10) vs 100 classes (caltech101), the same images
   count and settings (target: at most 2x, thanks to the pre-screen).
"""

from __future__ import annotations

import argparse

from bench_setup import frozen_model

from clip_backdoor.scanning.base import ScanSubject
from clip_backdoor.scanning.scan import build_scanners
from clip_backdoor.scanning.subject import scan_images


def images_of(model, name: str, count: int):
    return scan_images(name, "train", count, model.image_size, model.pixel_transform(), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mini-clip")
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    model, tokenizer, mode = frozen_model(args.model)
    subject = ScanSubject(model.eval(), tokenizer, args.model)
    caltech = images_of(model, "caltech101", args.images)
    print(f"scan of {args.model}, {args.images} caltech101 train images, defaults:")
    total, seconds = 0.0, {}
    for scanner in build_scanners(["decree", "target_search"]):
        finding = scanner.scan(subject, caltech, seed=0)
        total += finding.seconds
        seconds[finding.scanner] = finding.seconds
        print(
            f"  {finding.scanner:14s} {finding.seconds:7.1f} s  score {finding.score:.4g} "
            f"({finding.verdict})"
        )
    print(f"  whole scan     {total:7.1f} s = {total / 60:.1f} min (target < 10 min)")
    (search,) = build_scanners(["target_search"])
    few = search.scan(subject, images_of(model, "cifar10", args.images), seed=0).seconds
    many = seconds["target_search"]  # its 100-class run above, in this same process
    print(
        f"target_search: 10 classes {few:.1f} s, 100 classes {many:.1f} s: "
        f"{many / few:.2f}x (target <= 2x)"
    )


if __name__ == "__main__":
    main()
