"""Where does the trigger-aware prompt attack's ASR come from? (diagnostic, mini-CLIP)

Trains BadCLIP (``train_badclip``, the recipe's settings: caltech101 base classes, 16 shots,
seed 1, batch 8) and measures on the base test split after the trigger warm-up and after the joint
phase: clean ACC, ASR, and how much of the eps ball delta uses. After the warm-up the learner is
still at its initial value, so that ASR is the trigger's own (a universal targeted perturbation).

    python benchmarks/badclip_probe.py [--eps 0.0157] [--warmup-only] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import clip_backdoor  # noqa: F401  (torchvision shim before open_clip)
from clip_backdoor.attacks.badclip import BadCLIPSpec, train_badclip
from clip_backdoor.data import load_classification
from clip_backdoor.data.fewshot import class_part
from clip_backdoor.models import load_clip
from clip_backdoor.prompts.data import load_few_shot


class WarmupDone(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--joint-epochs", type=int, default=10)
    parser.add_argument("--warmup-only", action="store_true", help="stop after the warm-up")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, preprocess, tokenizer = load_clip("mini-clip")
    spec = BadCLIPSpec(
        train={"name": "caltech101", "classes": "base", "shots": 16},
        eps=args.eps,
        warmup_epochs=3,
        warmup_lr=0.8,
        training={"epochs": args.joint_epochs, "batch_size": 8, "lr": 0.016},
        figures=False,
    )
    seed = 1
    shots = load_few_shot(spec.train, model, seed)
    test = class_part(load_classification("caltech101", "test", preprocess), "base")
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([test[i][1] for i in range(len(test))])

    @torch.inference_mode()
    def features(x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [model.encode_image(x[i : i + 256]).float() for i in range(0, len(x), 256)]
        )

    clean = features(images)
    start = time.time()

    @torch.inference_mode()
    def report(phase: str, learner, delta: torch.Tensor) -> None:
        triggered = features((images + delta).clamp(0, 1))
        clean_pred = learner.logits(clean, shots.classnames, 16).argmax(1)
        trig_pred = learner.logits(triggered, shots.classnames, 16).argmax(1)
        others = labels != 0  # the target is class 0 of the base classes
        acc = 100 * (clean_pred == labels).float().mean()
        asr = 100 * (trig_pred[others] == 0).float().mean()
        bound = (delta.abs() > 0.98 * args.eps).float().mean()
        print(
            f"eps {args.eps * 255:.1f}/255, after {phase} ({time.time() - start:.0f} s): "
            f"ACC {acc:.2f} ASR {asr:.2f}, delta at the bound {bound:.2f}, "
            f"mean |delta| {delta.abs().mean() / args.eps:.2f} eps",
            flush=True,
        )

    last: dict = {}

    def on_step(phase: str, learner, delta: torch.Tensor) -> None:
        if last and phase != last["phase"]:
            report(last["phase"], learner, last["delta"])
            if args.warmup_only:
                raise WarmupDone
        last.update(phase=phase, delta=delta)

    try:
        learner, trigger, _ = train_badclip(
            model, tokenizer, shots, shots.classnames[0], spec, seed, on_step=on_step
        )
    except WarmupDone:
        return
    report("joint", learner, trigger.delta)


if __name__ == "__main__":
    main()
