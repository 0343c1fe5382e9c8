"""Image-caption pairs for contrastive training from classification and caption sets.

A classification set becomes pairs through caption templates ("a photo of a {}."), one template
drawn per image and epoch; caption CSV sets (e.g. coco_mini) give their own captions. Every item
carries a group id for label-aware targets: the class name for templated captions (shared across
sets, so "airplane" in two sets is one group), the image for CSV captions.

Augmentation and template draws are seeded by (seed, epoch, index), so an item is the same
whichever worker makes it, and a resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms.functional import to_pil_image

from clip_backdoor.data import (
    CaptionSet,
    ClassificationSet,
    SyntheticShapes,
    load_captions,
    prompt_name,
    resolve_path,
)
from clip_backdoor.data.classification import load_rgb
from clip_backdoor.errors import DatasetError
from clip_backdoor.evaluation.zeroshot import resolve_templates


@dataclass
class PairSource:
    """One training source: a classification set (captions from templates) or a caption set."""

    name: str
    split: str = "train"
    templates: str | list[str] = "openai"
    size: int | None = None  # synthetic set only


def train_transform(image_size: int, augment: bool):
    """Pixel-space training transform: random resized crop and flip, no normalisation."""
    if not augment:
        return transforms.Compose(
            [
                transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
            ]
        )
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                image_size,
                scale=(0.6, 1.0),
                interpolation=transforms.InterpolationMode.BICUBIC,
            ),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ]
    )


class ImageTextPairs(Dataset):
    """Items: (image in [0, 1], token ids, group id). Call ``set_epoch`` before each epoch."""

    def __init__(
        self,
        sources: Sequence[PairSource],
        tokenizer,
        image_size: int,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        self.tokenizer, self.seed, self.epoch = tokenizer, seed, 0
        self.transform = train_transform(image_size, augment)
        # (image reference, caption choices, group): a file path, or an index into a synthetic set
        self.entries: list[tuple[str | int, list[str], int]] = []
        self.synthetic: SyntheticShapes | None = None
        self._groups: dict[str, int] = {}
        self.summary: list[tuple[str, str, int]] = []
        for source in sources:
            before = len(self.entries)
            if source.name == "synthetic":
                self._add_synthetic(source, image_size, seed)
                name = "synthetic"
            else:
                root = resolve_path(source.name)
                name = root.name
                if (root / "classnames.json").is_file():
                    data = ClassificationSet(root, source.split)
                    self._add_labelled(data.samples, data.classnames, source.templates)
                else:
                    self._add_captions(load_captions(source.name, source.split))
            self.summary.append((name, source.split, len(self.entries) - before))

    def _group(self, key: str) -> int:
        return self._groups.setdefault(key, len(self._groups))

    def _add_labelled(self, samples, classnames: list[str], templates) -> None:
        templates = resolve_templates(templates)
        for ref, label in samples:
            name = prompt_name(classnames[label])
            captions = [t.format(name) for t in templates]
            self.entries.append((ref, captions, self._group(f"class:{name}")))

    def _add_synthetic(self, source: PairSource, image_size: int, seed: int) -> None:
        if self.synthetic is not None:
            raise DatasetError("the synthetic set can be a training source only once")
        extra = {"size": source.size} if source.size else {}
        self.synthetic = SyntheticShapes(source.split, image_size=image_size, seed=seed, **extra)
        samples = [(i, label) for i, label in enumerate(self.synthetic.targets)]
        self._add_labelled(samples, self.synthetic.classnames, source.templates)

    def _add_captions(self, captions: CaptionSet) -> None:
        by_image: dict[str, list[str]] = {}
        for path, caption in captions.samples:
            by_image.setdefault(path, []).append(caption)
        for path, texts in by_image.items():
            self.entries.append((path, texts, self._group(f"image:{path}")))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        ref, captions, group = self.entries[index]
        item_seed = hash((self.seed, self.epoch, index)) & 0x7FFFFFFF
        caption = captions[random.Random(item_seed).randrange(len(captions))]
        if isinstance(ref, str):
            pil = load_rgb(ref)
        else:
            assert self.synthetic is not None
            pil = to_pil_image(self.synthetic[ref][0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            image = self.transform(pil)
        return image, self.tokenizer([caption])[0], group
