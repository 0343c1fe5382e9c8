"""GPU smoke check (issue 28): the full-size path on an untrained ViT-B-32 at 224 px.

A few steps each of poisoning, FT, CleanCLIP, RVPT, Decomp-Rep, every input detector, CoCoOp and
the trigger-aware prompt attack (BadCLIP), with bf16 autocast, on the synthetic set (no data to
carry), then samples/s of poisoning fine-tuning next to a plain open_clip training loop on the
same batches in the same process. It fails loudly on any device mismatch: every parameter and
buffer of the model must sit on the run's device (the runner checks after every stage, this
script after its throughput loop), and CUDA errors are not caught. Writes results/gpu_smoke.md
(or --out).

    make gpu-check                                   # on a CUDA machine
    python benchmarks/gpu_smoke.py --device cpu --model mini-tiny --precision fp32  # the path
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import clip_backdoor  # noqa: F401  (torchvision shim before open_clip)
from clip_backdoor.core import precision as precision_mod
from clip_backdoor.pipeline.recipes import parse_recipe
from clip_backdoor.pipeline.runner import run_recipe


def training(steps: int, batch: int, mode: str) -> dict:
    return {
        "steps": steps,
        "batch_size": batch,
        "lr": 1e-5,
        "warmup_steps": 1,
        "checkpoint_every": 10**6,
        "log_every": 10**6,
        "num_workers": 0,
        "precision": mode,
    }


def recipes(model: str, device: str, mode: str, steps: int, batch: int, root: str) -> list[dict]:
    """The poisoning-and-defenses chain and the prompt chain, each a few steps per stage."""
    train = [{"name": "synthetic", "split": "train", "size": 256, "templates": "simple"}]
    shots = {"name": "synthetic", "split": "train", "size": 256, "shots": 2}
    few = {"epochs": 1, "batch_size": 4, "precision": mode}
    base = {
        "model": {"name": model},
        "device": device,
        "runs_root": root,
        "data": [{"name": "synthetic", "split": "test", "size": 64}],
        "evaluation": {
            "templates": "simple",
            "quality": False,
            "precision": mode,
            "batch_size": 32,
            "validation": 0.25,
        },
    }
    detect = {"kind": "detection", "evaluate": False}
    poison = {
        "trigger": {"name": "badnet", "params": {"position": "bottom_right"}},
        "target": "red circle",
        "ratio": 0.05,
        "data": train,
        "caption_templates": "simple",
        "training": training(steps, batch, mode),
    }
    chain = {
        **base,
        "name": "gpu_smoke_poisoning",
        "stages": [
            {"kind": "attack", "method": "poison", "label": "attack", "params": poison},
            {**detect, "method": "decomp_det", "params": {"images": 8}},
            {**detect, "method": "strip", "params": {"images": 8, "blends": 4}},
            {**detect, "method": "scale_up", "params": {"images": 8}},
            {**detect, "method": "teco", "params": {"images": 4, "workers": 1}},
            {
                "kind": "defense",
                "method": "ft",
                "params": {
                    "data": train,
                    "fraction": 0.5,
                    "training": training(steps, batch, mode),
                },
            },
            {
                "kind": "defense",
                "method": "cleanclip",
                "params": {"data": train, "training": training(steps, batch, mode)},
            },
            {
                "kind": "defense",
                "method": "rvpt",
                "params": {"train": shots, "length": 4, "training": few},
            },
            {"kind": "defense", "method": "decomp_rep", "params": {}},
        ],
    }
    prompts = {
        **base,
        "name": "gpu_smoke_prompts",
        "stages": [
            {"kind": "prompt", "method": "cocoop", "params": {"train": shots, "training": few}},
            {
                "kind": "attack",
                "method": "badclip",
                "params": {
                    "train": shots,
                    "target": "red circle",
                    "warmup_epochs": 1,
                    "training": few,
                },
            },
        ],
    }
    return [chain, prompts]


def check_devices(model, device: str) -> None:
    """Every parameter and buffer on ``device``, or a loud failure naming the first that is not."""
    wanted = torch.device(device).type
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type != wanted:
            raise SystemExit(f"DEVICE MISMATCH: {name} is on {tensor.device}, the run on {device}")


def throughput(
    model_name: str, device: str, mode: str, batch: int, steps: int
) -> tuple[float, float]:
    """(poisoning fine-tuning samples/s through the engine, a plain open_clip loop's)."""
    import tempfile

    from clip_backdoor.attacks.poisoning import PoisonAttack, PoisonedPairs, build_trigger
    from clip_backdoor.engine.config import TrainingSpec
    from clip_backdoor.engine.pairs import ImageTextPairs, PairSource
    from clip_backdoor.engine.trainer import train
    from clip_backdoor.models import load_clip

    loaded = load_clip(model_name, device=device)
    model, tokenizer = loaded.model, loaded.tokenizer
    spec = TrainingSpec(**training(steps, batch, mode))
    data = ImageTextPairs(
        [PairSource("synthetic", "train", "simple", 1024)], tokenizer, model.image_size, True, 0
    )
    attack = PoisonAttack(
        trigger={"name": "badnet"},
        target="red circle",
        ratio=0.05,
        data=[{"name": "synthetic", "templates": "simple", "size": 1024}],
        training=spec.model_dump(),
    )
    trigger = build_trigger("badnet", {}, model.image_size, 0)
    poisoned = PoisonedPairs(
        data, attack.plan(model, tokenizer, data, trigger, 0, lambda m: None), trigger
    )
    with tempfile.TemporaryDirectory() as tmp:
        engine = train(model, poisoned, spec, 0, Path(tmp), progress=False, log=lambda m: None)
    check_devices(model, device)
    batches = [[poisoned[i] for i in range(s * batch, (s + 1) * batch)] for s in range(steps)]
    clip = model.clip
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-5)
    loss_fn = __import__("open_clip").ClipLoss()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for items in batches:
        images = torch.stack([i[0] for i in items]).to(device)
        tokens = torch.stack([i[1] for i in items]).to(device)
        with precision_mod.autocast(mode, device):
            image_f, text_f, scale = clip(model.normalize(images), tokens)[:3]
            loss = loss_fn(image_f.float(), text_f.float(), scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    plain = steps * batch / (time.perf_counter() - start)
    return engine.samples_per_s, plain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="untrained open_clip architecture")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs-root", default="runs/gpu_smoke")
    parser.add_argument("--out", default="results/gpu_smoke.md")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device on this machine; nothing measured", file=sys.stderr)
        return 2
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name() if cuda else precision_mod.cpu_name()
    lines = [
        f"# GPU smoke check: {args.model} (untrained) on {args.device} ({where})",
        "",
        f"precision {args.precision}; torch {torch.__version__}; "
        f"`python benchmarks/gpu_smoke.py {' '.join(argv or sys.argv[1:])}`",
        "",
        "| recipe | stages | seconds |",
        "|---|---|---|",
    ]
    for recipe in recipes(
        args.model, args.device, args.precision, args.steps, args.batch_size, args.runs_root
    ):
        start = time.perf_counter()
        result = run_recipe(parse_recipe(recipe, recipe["name"]), progress=False)
        seconds = time.perf_counter() - start
        stages = ", ".join(s["method"] for s in recipe["stages"])
        lines.append(f"| {recipe['name']} | {stages} | {seconds:.1f} |")
        print(f"{recipe['name']}: ok in {seconds:.1f} s ({result.path})")
    engine, plain = throughput(
        args.model, args.device, args.precision, args.batch_size, args.steps * 3
    )
    lines += [
        "",
        f"Poisoning fine-tuning through the engine: {engine:.1f} samples/s; a plain "
        f"open_clip loop on the same batches: {plain:.1f} samples/s "
        f"({engine / plain:.2f}x), batch {args.batch_size}, {args.steps * 3} steps.",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
