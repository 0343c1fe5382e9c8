"""Pretraining throughput: fp32 vs bf16 autocast side by side, and FLOP/s against matmul peak.

Times full training steps (forward, label-aware loss, backward, AdamW) of a mini CLIP on
in-memory batches, so data loading is left out. FLOPs per step are counted by
torch.utils.flop_counter; the peak is the best of large square matmuls in each dtype.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import clip_backdoor  # noqa: F401  (torchvision shim before open_clip)
from clip_backdoor.core import precision
from clip_backdoor.engine.loss import clip_loss
from clip_backdoor.models import load_clip


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_step(model, optimizer, images, tokens, groups, mode: str):
    def step() -> None:
        with precision.autocast(mode):
            image_features, text_features, _ = model(images, tokens)
            loss = clip_loss(
                image_features.float(), text_features.float(), model.clip.logit_scale, groups
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    model, _, tokenizer = load_clip(args.model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size, batch = model.image_size, args.batch_size
    images = torch.rand(batch, 3, size, size)
    tokens = tokenizer([f"a photo of a class {i % 10} thing." for i in range(batch)])
    groups = torch.arange(batch) % 10
    print(
        f"cpu: {precision.cpu_name()} | threads: {torch.get_num_threads()} | "
        f"native bf16: {precision.native_bf16()}"
    )
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.model} ({params / 1e6:.1f}M parameters, {size}px), batch {batch}")

    with FlopCounterMode(display=False) as counter:
        make_step(model, optimizer, images, tokens, groups, "fp32")()
    flops = counter.get_total_flops()
    # bf16 without native support runs ~80x slower: measured only where the CPU has it
    modes = ("fp32", "bf16") if precision.native_bf16() else ("fp32",)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {m: matmul_peak(dtypes[m]) for m in modes}
    steps = {m: make_step(model, optimizer, images, tokens, groups, m) for m in modes}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {m: [] for m in steps}
    for _ in range(args.steps):  # interleaved
        for mode, step in steps.items():
            times[mode].append(_timed(step))

    print(
        "\n| precision | s/step | samples/s | achieved GFLOP/s | matmul peak GFLOP/s | % of peak |"
    )
    print("|---|---|---|---|---|---|")
    rates = {}
    for mode, values in times.items():
        t = statistics.median(values)
        rates[mode] = batch / t
        achieved = flops / t
        print(
            f"| {mode} | {t:.3f} | {batch / t:.1f} | {achieved / 1e9:.1f} | "
            f"{peaks[mode] / 1e9:.1f} | {100 * achieved / peaks[mode]:.0f} |"
        )
    print(
        f"\nFLOPs per training step: {flops / 1e9:.2f} GFLOP "
        f"({flops / batch / 1e6:.1f} MFLOP/sample)"
    )
    if "bf16" in rates:
        print(f"bf16 / fp32 samples/s: {rates['bf16'] / rates['fp32']:.2f}x")
    else:
        print("bf16 not measured: this CPU has no native bf16 (precision auto picks fp32)")


if __name__ == "__main__":
    main()
