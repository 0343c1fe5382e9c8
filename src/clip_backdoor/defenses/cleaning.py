"""Cleaning: drop the pairs a data detector flags, then run the attack's training again.

The defender scans the training mix (``clip_backdoor.data_scan``) with the attacked model or a
clean one, removes the most suspect pairs (a share of the mix, or a count), and fine-tunes the
clean model the attack started from on what is left, with the attack's own training settings
and augmentation (each kept pair sees the very views it saw before). The run continues with
that model; the trigger and target stay, so the evaluation after it says how much backdoor the
cleaned data still teaches. Cached and resumable like every attack.
"""

from __future__ import annotations

import shutil
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from torch.utils.data import Dataset

from clip_backdoor.artifacts import (
    BACKDOOR_FILE,
    cache_key,
    is_artifact,
    link_into,
    write_folder,
)
from clip_backdoor.core.config import Strict, cache_root, validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.info_files import read_info
from clip_backdoor.core.registry import DEFENSES
from clip_backdoor.data_scan.base import build_detector
from clip_backdoor.data_scan.embed import embed_mix
from clip_backdoor.data_scan.mix import attack_mix
from clip_backdoor.engine.checkpoint import CHECKPOINT
from clip_backdoor.engine.config import TrainingSpec
from clip_backdoor.engine.trainer import train
from clip_backdoor.evaluation.features import model_fingerprint
from clip_backdoor.models import load_clip, load_model_spec, save_clip
from clip_backdoor.stages import StageOutput


class CleaningSpec(Strict):
    detector: str = Field(description="the data detector whose ranking is cut")
    detector_params: dict[str, Any] = Field(default_factory=dict)
    embedding: Literal["attacked", "clean"] = Field(
        "attacked", description="whose embeddings the detector sees"
    )
    remove: float | None = Field(
        0.05,
        gt=0,
        lt=1,
        description="share of the mix removed, most suspect first (default 5%: five times the "
        "1% poisoning rate the attacks of this project use, at a cost of 5% of the clean data)",
    )
    count: int | None = Field(None, gt=0, description="or: the number of pairs removed")
    training: TrainingSpec | None = Field(
        None, description="the retraining's settings (default: the attack's own, as it ran)"
    )
    cache: bool = True

    @model_validator(mode="after")
    def _one_cut(self):
        if self.count is not None:
            self.remove = None
        return self


class KeptPairs(Dataset):
    """The pairs at ``kept`` of a mix; each keeps its index, so its views are as before."""

    def __init__(self, pairs, kept: np.ndarray) -> None:
        self.pairs, self.kept = pairs, [int(i) for i in kept]

    def set_epoch(self, epoch: int) -> None:
        self.pairs.set_epoch(epoch)

    def preload(self) -> None:
        self.pairs.preload()

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, index: int):
        return self.pairs[self.kept[index]]


def removed_pairs(scores: np.ndarray, remove: float | None, count: int | None) -> np.ndarray:
    """Indices of the most suspect pairs (ties: the mix's order), as the spec's cut says."""
    n = len(scores)
    amount = count if count is not None else int(round(remove * n))
    if amount >= n:
        raise ConfigError(f"the cleaning cut removes {amount} of {n} pairs: nothing left to train")
    return np.sort(np.argsort(-scores, kind="stable")[:amount])


@DEFENSES.register("cleaning")
class Cleaning:
    kind = "cleaning"

    def __init__(self, **params) -> None:
        self.spec = validate(CleaningSpec, params, f"defense {self.kind}")
        build_detector(self.spec.detector, **self.spec.detector_params)  # bad input: now

    def run(self, ctx) -> StageOutput:
        spec, recipe = self.spec, ctx.recipe
        folder = ctx.run.path / "artifacts" / "backdoor"
        if not is_artifact(folder):
            raise ConfigError("the cleaning defense needs a data-poisoning attack stage before it")
        attack = read_info(folder, BACKDOOR_FILE, "backdoor artifact")
        clean = load_model_spec(recipe.model, recipe.device).model
        mix = attack_mix(folder, clean, ctx.tokenizer, ctx.progress)
        detector = build_detector(spec.detector, mix.seed, **spec.detector_params)
        scanner = ctx.model if spec.embedding == "attacked" else clean
        scores = detector.score(
            embed_mix(scanner, ctx.tokenizer, mix, cache=ctx.cache, progress=ctx.progress)
        )
        removed = removed_pairs(scores, spec.remove, spec.count)
        caught = int(mix.truth[removed].sum())
        info = {
            "detector": spec.detector,
            "pairs": len(mix),
            "removed": len(removed),
            "poisoned": mix.poisoned,
            "poisoned_removed": caught,
            "poisoned_left": mix.poisoned - caught,
        }
        ctx.log(f"cleaning: {len(removed)} pairs removed, {caught} of {mix.poisoned} poisoned")
        key = cache_key(
            self.kind,
            model_fingerprint(clean),
            spec.model_dump(),
            mix.seed,
            [attack.get("cache_key"), model_fingerprint(scanner)],
        )
        target = cache_root() / "defenses" / key
        reused = spec.cache and (target / "open_clip_config.json").is_file()
        if reused:
            ctx.log(f"reusing the cached cleaning model {target}")
        else:
            trained = attack_mix(folder, clean, ctx.tokenizer, ctx.progress, as_trained=True)
            kept = np.setdiff1d(np.arange(len(mix)), removed)
            partial = cache_root() / "defenses" / f"{key}.partial"
            result = train(
                clean,
                KeptPairs(trained.pairs, kept),
                spec.training or mix.spec.training,
                mix.seed,
                partial,
                resume=(partial / CHECKPOINT).is_file(),
                log=ctx.log,
                progress=ctx.progress,
            )
            write_folder(target, lambda tmp: save_clip(clean, tmp, overwrite=True))
            shutil.rmtree(partial, ignore_errors=True)
            info.update(steps=result.steps, train_samples_per_s=result.samples_per_s)
        link_into(target, ctx.run.path / "artifacts" / self.kind)
        cleaned = load_clip(target, device=recipe.device).model
        metrics = {**info, "cache_key": key, "reused": reused}
        return StageOutput(metrics, ctx.state.but(model=cleaned))
