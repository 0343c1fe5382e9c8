"""Training-data scan cost, measured side by side in one process:

1. scoring the 19k-pair BadNet mix of recipes/poisoning/badnet.yaml (mini-CLIP, or --model):
   seconds per detector on its embeddings, next to one epoch of that attack's fine-tuning
   (its training settings, timed over --steps steps and scaled to the epoch's step count;
   target: every detector under 0.2x of the epoch). Encoding the mix once is shown apart: the
   detectors share it, as do the scan, the triage list and the cleaning defense;
2. memory at 20k vs 200k synthetic pairs (--dim wide): the peak of each detector's scratch
   memory (traced allocations above what stays allocated after the call: the O(N k)
   neighbourhood and the scores; target within 2x, i.e. no N x N matrix), and its seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import yaml
from bench_setup import frozen_model

from clip_backdoor.attacks.specs import PoisonSpec
from clip_backdoor.core.registry import DATA_DETECTORS
from clip_backdoor.data_scan.base import PairEmbeddings, build_detector
from clip_backdoor.data_scan.embed import embed_mix
from clip_backdoor.data_scan.mix import clean_mix
from clip_backdoor.engine.pairs import pairs_for_training
from clip_backdoor.engine.trainer import train
from clip_backdoor.pipeline.methods import register_methods

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "poison_badnet.yaml"


def attack_spec() -> PoisonSpec:
    stages = yaml.safe_load(RECIPE.read_text())["stages"]
    return PoisonSpec(**next(s for s in stages if s["kind"] == "attack")["params"])


def epoch_seconds(model, tokenizer, spec: PoisonSpec, steps: int) -> tuple[float, int]:
    """(seconds of one epoch of the attack's fine-tuning, its step count), from ``steps``."""
    data = pairs_for_training(spec.data, tokenizer, model.image_size, spec.training, 0)
    data.preload()
    per_epoch = len(data) // spec.training.batch_size
    timed = spec.training.model_copy(update={"steps": steps, "checkpoint_every": 10**6})
    model.requires_grad_(True)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(model, data, timed, 0, Path(tmp), progress=False, log=lambda m: None)
        seconds = time.perf_counter() - start
    model.requires_grad_(False)
    return seconds / steps * per_epoch, per_epoch


def scratch_and_seconds(name: str, pairs: PairEmbeddings) -> tuple[float, float]:
    detector = build_detector(name)
    pairs._neighbourhoods.clear()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    scores = detector.score(pairs)
    seconds = time.perf_counter() - start
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del scores
    return (peak - max(current, before)) / 2**20, seconds


def synthetic(n: int, dim: int) -> PairEmbeddings:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, dim), dtype=np.float32)
    return PairEmbeddings(images, images + 0.5 * rng.standard_normal((n, dim), dtype=np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mini-clip")
    parser.add_argument("--steps", type=int, default=30, help="training steps timed")
    parser.add_argument("--dim", type=int, default=512, help="synthetic width (ViT-B/32's)")
    args = parser.parse_args()
    register_methods()
    model, tokenizer, _ = frozen_model(args.model)
    spec = attack_spec()
    data = pairs_for_training(
        spec.data,
        tokenizer,
        model.image_size,
        spec.training.model_copy(update={"augment": False}),
        0,
    )
    mix = clean_mix(data, "badnet mix")
    start = time.perf_counter()
    embeddings = embed_mix(model, tokenizer, mix)
    encode = time.perf_counter() - start
    epoch, steps = epoch_seconds(model, tokenizer, spec, args.steps)
    print(
        f"1. the {len(mix)}-pair BadNet mix; one epoch of its fine-tuning: {epoch:.1f} s "
        f"({steps} steps, timed over {args.steps}); encoding the mix once: {encode:.1f} s "
        f"({encode / epoch:.2f}x)"
    )
    for name in DATA_DETECTORS.names():
        _, seconds = scratch_and_seconds(name, embeddings)
        print(
            f"   {name:17s} {seconds:6.2f} s = {seconds / epoch:.3f}x of the epoch (target < 0.2x)"
        )
    print(f"2. synthetic pairs, width {args.dim}: scratch memory (MiB) and seconds")
    small, large = synthetic(20_000, args.dim), synthetic(200_000, args.dim)
    for name in DATA_DETECTORS.names():
        (m20, s20), (m200, s200) = (
            scratch_and_seconds(name, small),
            scratch_and_seconds(name, large),
        )
        print(
            f"   {name:17s} 20k {m20:7.1f} MiB {s20:6.2f} s | 200k {m200:7.1f} MiB "
            f"{s200:6.2f} s | memory {m200 / max(m20, 1e-9):.2f}x (target <= 2x), time "
            f"{s200 / s20:.1f}x"
        )


if __name__ == "__main__":
    main()
