"""The downstream pool a measuring model never trained on: where few-shot methods draw shots.

Why: a web-trained CLIP has not seen the 16 images a CoOp user or a defender tunes on. mini-CLIP
v2 is pretrained without (1) every image of a set's ``val/`` split (CoOp's val split) and (2) a
seeded ``shots`` images per class of its ``train/`` split, so that every class has 16 unseen
shots. The pool ships with the model (``fewshot_pool.json`` beside its weights, and with every
model fine-tuned from it): training pairs from a ``train`` split leave it out, and few-shot
draws come from it alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from clip_backdoor.core.errors import DatasetError
from clip_backdoor.data.classification import ClassificationSet, available_splits, load_rgb
from clip_backdoor.data.fewshot import NamedClasses, few_shot_indices

POOL_FILE = "fewshot_pool.json"
POOL_SPLIT = "val"  # held out whole


@dataclass
class FewShotPool:
    """Per data set (folder name): train images held out, as paths relative to the set."""

    shots: int
    seed: int
    train: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, roots: Sequence[Path], shots: int, seed: int) -> FewShotPool:
        pool = cls(shots, seed)
        for root in roots:
            data = ClassificationSet(root, "train")
            indices = few_shot_indices(data.targets, shots, seed)
            pool.train[root.name] = sorted(_relative(data.samples[i][0], root) for i in indices)
        return pool

    def covers(self, root: Path) -> bool:
        return root.name in self.train

    def excluded(self, root: Path) -> set[str]:
        """Relative paths of ``root``'s train images that pretraining and fine-tuning skip."""
        return set(self.train.get(root.name, []))

    def keep_for_training(self, root: Path, samples: list[tuple[str, int]]):
        held = self.excluded(root)
        return [(p, y) for p, y in samples if _relative(p, root) not in held]

    def samples(self, root: Path) -> list[tuple[str, int]]:
        """The pool of ``root``: its held-out train images, then its whole val split."""
        if not self.covers(root):
            raise DatasetError(
                f"{root.name} has no few-shot pool in this model (pool sets: "
                f"{', '.join(self.train) or 'none'})"
            )
        held = self.excluded(root)
        train = ClassificationSet(root, "train")
        chosen = [(p, y) for p, y in train.samples if _relative(p, root) in held]
        if POOL_SPLIT in available_splits(root):
            chosen += ClassificationSet(root, POOL_SPLIT).samples
        return chosen

    def to_json(self) -> dict:
        return {
            "shots": self.shots,
            "seed": self.seed,
            "held_out_split": POOL_SPLIT,
            "train": self.train,
        }

    def save(self, folder: Path) -> None:
        (Path(folder) / POOL_FILE).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> FewShotPool | None:
        path = Path(folder) / POOL_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(int(data["shots"]), int(data["seed"]), dict(data["train"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{path} is not a few-shot pool file ({e})") from None

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]


class PoolSet(NamedClasses, Dataset):
    """A set's pool as a labelled set (the interface of ``ClassificationSet``)."""

    def __init__(self, root: Path, pool: FewShotPool, transform=None) -> None:
        base = ClassificationSet(root, "train")
        self.samples = pool.samples(root)
        self.targets = [y for _, y in self.samples]
        self.classnames, self.name, self.split = base.classnames, root.name, "pool"
        self.transform, self._pool = transform, pool

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform else image), label

    def fingerprint(self) -> str:
        digest = hashlib.sha1("|".join(p for p, _ in self.samples).encode()).hexdigest()
        return f"{self.name}|pool={self._pool.fingerprint()}|{digest}"


def _relative(path: str, root: Path) -> str:
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
