"""A training mix as the victim received it: every pair's image and caption, and the truth.

Why: the defender's question is about a data set on disk. An attack artifact of the data-poisoning
attack records how its mix was made (the data spec and seed in ``backdoor.json``, the poisoned
indices and their captions in ``poison.json``, the trigger), so the same mix is rebuilt here
without augmentation: pair i is the image the attacker stamped (at model resolution) and the
caption it then carried in the first epoch. Detectors see only the embeddings of these pairs;
``truth`` (from ``poison.json``) is for scoring them afterwards.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clip_backdoor.artifacts import BACKDOOR_FILE, POISON_FILE, load_trigger
from clip_backdoor.attacks.poisoning import PoisonedPairs, PoisonPlan
from clip_backdoor.attacks.specs import PoisonSpec
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.info_files import read_info
from clip_backdoor.engine.pairs import ImageTextPairs, pairs_for_training


@dataclass
class TrainingMix:
    """Pairs (``pair(i) -> (image in [0, 1], caption)``) with their image files and the truth."""

    pairs: PoisonedPairs | ImageTextPairs
    truth: np.ndarray | None  # bool (N,), None where nothing is known
    name: str
    digest: str  # identifies the mix for the feature cache
    spec: PoisonSpec | None = None  # the attack that made it, when rebuilt from an artifact
    seed: int = 0
    _captions: list[str] | None = None

    def captions(self) -> list[str]:
        """Every pair's caption (computed once; ``embed_mix`` fills it as it goes)."""
        if self._captions is None:
            self._captions = [self.pair(i)[1] for i in range(len(self))]
        return self._captions

    def __len__(self) -> int:
        return len(self.pairs)

    def pair(self, index: int) -> tuple[torch.Tensor, str]:
        if isinstance(self.pairs, PoisonedPairs):
            image, caption, _ = self.pairs.pair(index)
            return image, caption
        base = self.pairs
        view = base.augmented(index)
        return view, base.caption(index, view)

    def image_ref(self, index: int) -> str:
        base = self.pairs.base if isinstance(self.pairs, PoisonedPairs) else self.pairs
        return str(base.entries[index].ref)

    @property
    def poisoned(self) -> int:
        return 0 if self.truth is None else int(self.truth.sum())


def attack_mix(
    folder: str | Path, model, tokenizer, progress: bool = False, as_trained: bool = False
) -> TrainingMix:
    """The poisoned mix of a data-poisoning artifact, rebuilt on ``model``'s resolution and
    few-shot pool (the clean model the attack started from); ``as_trained`` keeps the attack's
    augmentation (to train on it again) instead of the plain images a scan reads."""
    folder = Path(folder)
    info = read_info(folder, BACKDOOR_FILE, "backdoor artifact")
    if info.get("attack") != "poison" or not (folder / POISON_FILE).is_file():
        raise ConfigError(
            f"{folder}: only data-poisoning artifacts have a training mix to scan "
            f"(this one is '{info.get('attack', '?')}')"
        )
    spec = PoisonSpec(**info["config"])
    seed = int(info["seed"])
    training = spec.training if as_trained else spec.training.model_copy(update={"augment": False})
    data = pairs_for_training(
        spec.data,
        tokenizer,
        model.image_size,
        training,
        seed,
        progress,
        pool=getattr(model, "fewshot_pool", None),
    )
    poison = json.loads((folder / POISON_FILE).read_text())
    indices = [int(i) for i in poison["indices"]]
    outside = [i for i in indices + list(poison.get("noise_indices", [])) if not 0 <= i < len(data)]
    if outside:
        raise ConfigError(
            f"{folder / POISON_FILE}: index {outside[0]} falls outside the mix of {len(data)} pairs"
        )
    refs = [str(data.entries[i].ref) for i in indices]
    if poison.get("images") and poison["images"] != refs:
        raise ConfigError(
            f"{folder / POISON_FILE}: its poisoned images are not those of the rebuilt mix "
            "(the data in the data root changed since the attack ran)"
        )
    trigger = load_trigger(folder)
    if getattr(trigger, "clean_label", False):
        raise ConfigError(
            f"{folder}: a clean-label attack's hardened images are not stored; its mix cannot "
            "be rebuilt"
        )
    captions = {int(i): list(c) for i, c in poison["captions"].items()}
    plan = PoisonPlan(indices, captions, dict.fromkeys(indices, 0), poison.get("noise_indices", []))
    truth = np.zeros(len(data), dtype=bool)
    truth[indices] = True
    digest = hashlib.sha1(json.dumps([info.get("cache_key"), indices]).encode()).hexdigest()
    digest += "-as-trained" if as_trained else ""
    return TrainingMix(PoisonedPairs(data, plan, trigger), truth, folder.name, digest, spec, seed)


def clean_mix(data: ImageTextPairs, name: str) -> TrainingMix:
    """A mix with no known truth (e.g. a user's own data set)."""
    digest = hashlib.sha1(repr((data.summary, data.seed)).encode()).hexdigest()
    return TrainingMix(data, None, name, digest)
