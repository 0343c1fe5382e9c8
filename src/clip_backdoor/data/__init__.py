"""Data sets as float images in [0, 1] at the model's resolution; names resolve to folders.

A data set is named by a path, by ``synthetic``, or by the name of a folder in a data root
(``core.settings.data_roots``: ``$CLIP_BACKDOOR_DATA``, then the settings file's), e.g.
``cifar10`` or ``coco_mini`` (an alias of ``flickr8k_mini``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from clip_backdoor.core.errors import DatasetError
from clip_backdoor.core.settings import data_roots
from clip_backdoor.data.captions import CaptionSet
from clip_backdoor.data.classification import ClassificationSet, prompt_name
from clip_backdoor.data.fewshot import ClassSubset, IndexSubset, base_novel_split, few_shot_indices
from clip_backdoor.data.synthetic import SyntheticShapes
from clip_backdoor.data.tensors import TensorSet

ALIASES = {"coco_mini": "flickr8k_mini"}


def resolve_path(name: str) -> Path:
    """A path as given, or a named set under the first data root that has it."""
    path = Path(name).expanduser()
    if path.exists() or os.sep in name or name.startswith("."):
        if not path.exists():
            raise DatasetError(f"data path not found: {path}")
        return path
    folder = ALIASES.get(name, name)
    for root in data_roots():
        if (root / folder).is_dir():
            return root / folder
    raise DatasetError(
        f"data set '{name}' not found (not a path, and not in "
        f"{', '.join(map(str, data_roots())) or 'any data root: set CLIP_BACKDOOR_DATA'})"
    )


def load_classification(
    name: str,
    split: str,
    transform: Callable | None = None,
    image_size: int = 32,
    seed: int = 0,
    size: int | None = None,
):
    """A classification split; ``synthetic`` draws ``size`` images at ``image_size``."""
    if name == "synthetic":
        extra = {"size": size} if size is not None else {}
        return SyntheticShapes(split=split, image_size=image_size, seed=seed, **extra)
    return ClassificationSet(resolve_path(name), split, transform)


def load_captions(name: str, split: str, transform: Callable | None = None) -> CaptionSet:
    root = resolve_path(name)
    csv_path = root if root.suffix == ".csv" else root / f"{split}.csv"
    if not csv_path.is_file():
        splits = sorted(p.stem for p in root.glob("*.csv")) if root.is_dir() else []
        raise DatasetError(
            f"unknown split '{split}' for {root.name} (available: {', '.join(splits) or 'none'})"
        )
    return CaptionSet(csv_path, transform)


__all__ = [
    "CaptionSet",
    "ClassSubset",
    "ClassificationSet",
    "IndexSubset",
    "SyntheticShapes",
    "TensorSet",
    "base_novel_split",
    "data_roots",
    "few_shot_indices",
    "load_captions",
    "load_classification",
    "prompt_name",
    "resolve_path",
]
