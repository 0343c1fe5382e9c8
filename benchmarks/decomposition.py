"""Decomposition cost, side by side in one process (medians of interleaved repeats):

1. the exact decomposition of a batch (heads, MLPs, direct path; fp32, as it is defined) vs a
   plain fp32 ``encode_image`` of the same batch (target <= 2x);
2. peak memory (max RSS) of calibrating Decomp-Rep on 2,000 images vs 200 (two streamed passes:
   clean means, then per-image scores), each in a fresh child process; images are generated per
   item, so only the decomposition's own memory can grow (target: within 10%).

mini-CLIP (or --model), batch 128.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import torch
from bench_setup import frozen_model

from clip_backdoor.analysis.decomposition import decompose
from clip_backdoor.analysis.infected_heads import calibrate


class RandomImages(torch.utils.data.Dataset):
    """``count`` random images made when asked for: the data set itself holds nothing."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(index)
        return torch.rand((3, self.size, self.size), generator=generator), 0


def times(model, images) -> tuple[float, float]:
    with torch.no_grad():
        start = time.perf_counter()
        model.encode_image(images)
        middle = time.perf_counter()
        decompose(model, images)
        end = time.perf_counter()
    return middle - start, end - middle


def child(model_name: str, count: int) -> None:
    from clip_backdoor.models import load_clip

    model = load_clip(model_name).model.eval()
    calibrate(model, RandomImages(count, model.image_size), batch_size=128)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def peak_kib(model_name: str, count: int) -> int:
    command = [sys.executable, __file__, "--model", model_name, "--child", str(count)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini-clip")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.child)
        return
    model, _, _ = frozen_model(args.model)
    size = model.image_size
    images = torch.rand((128, 3, size, size), generator=torch.Generator().manual_seed(0))
    times(model, images)  # warm-up
    pairs = [times(model, images) for _ in range(args.repeats)]
    plain, parts = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    print(f"128 images at {size} px ({args.model}), fp32:")
    print(
        f"  encode_image {plain * 1000:.0f} ms, decomposition {parts * 1000:.0f} ms: "
        f"{parts / plain:.2f}x (target <= 2x)"
    )
    small, large = peak_kib(args.model, 200), peak_kib(args.model, 2000)
    print("peak memory of a streamed calibration (two passes, batch 128):")
    print(
        f"  200 images {small / 1024:.0f} MiB, 2,000 images {large / 1024:.0f} MiB: "
        f"{large / small:.3f}x (target within 10%)"
    )


if __name__ == "__main__":
    main()
