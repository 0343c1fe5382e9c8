"""Few-shot sampling and the base/novel class split of the prompt-learning protocols (CoOp)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from clip_backdoor.core.errors import DatasetError
from clip_backdoor.data.classification import prompt_name


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


class NamedClasses:
    """``class_index`` by name for sets that carry ``classnames`` and ``name``."""

    classnames: list[str]
    name: str

    def class_index(self, name: str) -> int:
        for index, classname in enumerate(self.classnames):
            if name in (classname, prompt_name(classname)):
                return index
        raise DatasetError(f"class '{name}' is not in {self.name}")


class ClassSubset(NamedClasses, Dataset):
    """The images of some classes, relabelled 0..k-1 in the order given."""

    def __init__(self, dataset, labels: Sequence[int], part: str | None = None) -> None:
        self.dataset = dataset
        self.labels = list(labels)
        remap = {label: new for new, label in enumerate(self.labels)}
        self.indices = [i for i, t in enumerate(dataset.targets) if t in remap]
        self.targets = [remap[dataset.targets[i]] for i in self.indices]
        self.classnames = [dataset.classnames[label] for label in self.labels]
        self.name = f"{dataset.name}:{part}" if part else dataset.name
        self.split = dataset.split
        self.transform = getattr(dataset, "transform", None)
        self._remap = remap

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, label = self.dataset[self.indices[index]]
        return image, self._remap[label]

    def fingerprint(self) -> str:
        return f"{self.dataset.fingerprint()}|classes={self.labels}"


def class_part(dataset, part: str) -> Dataset:
    """``all`` classes, or CoOp's ``base`` (first half) / ``novel`` (second half) subset."""
    if part == "all":
        return dataset
    base, novel = base_novel_split(len(dataset.classnames))
    if part not in ("base", "novel"):
        raise DatasetError(f"classes must be all, base or novel, not '{part}'")
    return ClassSubset(dataset, base if part == "base" else novel, part)


class TargetFirst(NamedClasses, Dataset):
    """A class list that lacks the target with the target name inserted at index 0 (labels
    shift by one): how the trigger-aware attack is measured on unseen classes
    (docs/methods.md 3.5)."""

    def __init__(self, dataset, target: str) -> None:
        self.dataset, self.target = dataset, target
        self.classnames = [target, *dataset.classnames]
        self.targets = [t + 1 for t in dataset.targets]
        self.name, self.split = f"{dataset.name}+{prompt_name(target)}", dataset.split
        self.transform = getattr(dataset, "transform", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label + 1

    def fingerprint(self) -> str:
        return f"{self.dataset.fingerprint()}|target_first={self.target}"


class IndexSubset(NamedClasses, Dataset):
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


def holdout_split(dataset, fraction: float, seed: int) -> tuple[IndexSubset, IndexSubset]:
    """(held out, rest): a seeded ``fraction`` of the images, e.g. He et al.'s clean-validation
    part of the test split, which the stages may use and no reported number may."""
    if not 0 < fraction < 1:
        raise DatasetError(f"the held-out fraction must be in (0, 1), got {fraction}")
    count = round(fraction * len(dataset))
    if not 0 < count < len(dataset):
        raise DatasetError(
            f"holding out {fraction:g} of {len(dataset)} images of {dataset.name} empties a part"
        )
    order = np.random.default_rng(seed).permutation(len(dataset)).tolist()
    return IndexSubset(dataset, sorted(order[:count])), IndexSubset(dataset, sorted(order[count:]))
