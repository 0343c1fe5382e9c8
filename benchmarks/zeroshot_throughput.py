"""Zero-shot evaluation vs a plain open_clip ``encode_image`` loop, side by side in one process.

Untrained ViT-B-32 (224 px), 512 images, 10 classes with one template. Targets (issue 2): our
evaluation costs at most 1.15x the plain loop in fp32, and at most 0.6x of it with bf16
autocast. bf16 is judged only where the CPU has native bf16 (amx_bf16 / avx512_bf16).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import clip_backdoor  # noqa: F401  (torchvision shim before open_clip)
from clip_backdoor.core import precision
from clip_backdoor.data import TensorSet
from clip_backdoor.evaluation import evaluate_zeroshot
from clip_backdoor.models import load_clip


def plain_loop(clip, normalized: torch.Tensor, batch_size: int) -> None:
    with torch.no_grad():
        for start in range(0, len(normalized), batch_size):
            clip.encode_image(normalized[start : start + batch_size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, _, tokenizer = load_clip(args.model)
    size = model.image_size
    images = torch.rand(args.images, 3, size, size)
    data = TensorSet(images, torch.arange(args.images) % 10, [f"class {i}" for i in range(10)])
    normalized = model.normalize(images)  # the plain loop gets pre-normalised tensors
    native = precision.native_bf16()
    print(
        f"cpu: {precision.cpu_name()} | threads: {torch.get_num_threads()} | native bf16: {native}"
    )
    print(
        f"model: {args.model} untrained, {args.images} images at {size}px, batch {args.batch_size}"
    )

    runs = {
        "plain open_clip loop (fp32)": lambda: plain_loop(model.clip, normalized, args.batch_size),
        "clip-backdoor eval (fp32)": lambda: evaluate_zeroshot(
            model, tokenizer, data, "photo", batch_size=args.batch_size, precision="fp32"
        ),
    }
    if native:  # emulated bf16 runs ~80x slower: not worth minutes of waiting to report it
        runs["clip-backdoor eval (bf16 autocast)"] = lambda: evaluate_zeroshot(
            model, tokenizer, data, "photo", batch_size=args.batch_size, precision="bf16"
        )
    for run in runs.values():  # warm-up: allocator, kernels
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["plain open_clip loop (fp32)"])
    print("\n| variant | median s | images/s | ratio to plain |\n|---|---|---|---|")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"| {name} | {t:.2f} | {args.images / t:.1f} | {t / base:.3f} |")
    fp32 = statistics.median(times["clip-backdoor eval (fp32)"]) / base
    print(f"\nfp32 ratio {fp32:.3f} (target <= 1.15): {'PASS' if fp32 <= 1.15 else 'FAIL'}")
    if native:
        bf16 = statistics.median(times["clip-backdoor eval (bf16 autocast)"]) / base
        print(f"bf16 ratio {bf16:.3f} (target <= 0.60): {'PASS' if bf16 <= 0.6 else 'FAIL'}")
    else:
        print("bf16: not measured, not judged (this CPU has no native bf16)")


if __name__ == "__main__":
    main()
