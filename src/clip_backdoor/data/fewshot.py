"""Few-shot sampling and the base/novel class split of the prompt-learning protocols (CoOp)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from clip_backdoor.errors import DatasetError


def few_shot_indices(targets: Sequence[int], shots: int, seed: int) -> list[int]:
    """``shots`` indices per class, drawn without replacement with ``seed``; sorted by class."""
    if shots < 1:
        raise DatasetError(f"shots must be at least 1, got {shots}")
    labels = np.asarray(targets)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in np.unique(labels):
        pool = np.flatnonzero(labels == label)
        if len(pool) < shots:
            raise DatasetError(f"class {label} has {len(pool)} images, fewer than {shots} shots")
        chosen.extend(sorted(rng.choice(pool, size=shots, replace=False).tolist()))
    return chosen


def base_novel_split(num_classes: int) -> tuple[list[int], list[int]]:
    """CoOp's split: the first ceil(n/2) labels are base (seen), the rest novel (unseen)."""
    middle = math.ceil(num_classes / 2)
    return list(range(middle)), list(range(middle, num_classes))


class ClassSubset(Dataset):
    """The images of some classes, relabelled 0..k-1 in the order given."""

    def __init__(self, dataset, labels: Sequence[int]) -> None:
        self.dataset = dataset
        self.labels = list(labels)
        remap = {label: new for new, label in enumerate(self.labels)}
        self.indices = [i for i, t in enumerate(dataset.targets) if t in remap]
        self.targets = [remap[dataset.targets[i]] for i in self.indices]
        self.classnames = [dataset.classnames[label] for label in self.labels]
        self.name, self.split = dataset.name, dataset.split
        self._remap = remap

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, label = self.dataset[self.indices[index]]
        return image, self._remap[label]

    def fingerprint(self) -> str:
        return f"{self.dataset.fingerprint()}|classes={self.labels}"


class IndexSubset(Dataset):
    """Some items of a labelled set, keeping its labels and class names (few-shot subsets)."""

    def __init__(self, dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.targets = [dataset.targets[i] for i in self.indices]
        self.classnames = dataset.classnames
        self.name, self.split = dataset.name, dataset.split

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]

    def fingerprint(self) -> str:
        digest = hashlib.sha1(",".join(map(str, self.indices)).encode()).hexdigest()
        return f"{self.dataset.fingerprint()}|indices={digest}"
