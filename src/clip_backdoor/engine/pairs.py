"""Image-caption pairs for contrastive training from classification and caption sets.

A classification set becomes pairs through caption templates ("a photo of a {}."), one template
drawn per image and epoch, or through web-like captions built from the class and the pixels of
the view (``data/web_captions.py``); caption CSV sets (e.g. coco_mini) give their own captions.
Every item carries a group id for label-aware targets: the class name for templated captions
(shared across sets, so "airplane" in two sets is one group), the exact caption text for web
captions (pairs are their own positives; only identical texts share a target, since the loss
cannot tell them apart), the image for CSV captions.

A model with a few-shot pool (``data/fewshot_pool.py``) keeps its pool out of the pairs drawn
from ``train`` splits, and ``shots`` then draws from the pool alone.

Augmentation and template draws are seeded by (seed, epoch, index), so an item is the same
whichever worker makes it, and a resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from clip_backdoor.core.errors import DatasetError
from clip_backdoor.data import (
    CaptionSet,
    ClassificationSet,
    SyntheticShapes,
    load_captions,
    prompt_name,
    resolve_path,
)
from clip_backdoor.data.classification import load_rgb
from clip_backdoor.data.fewshot import few_shot_indices
from clip_backdoor.data.fewshot_pool import FewShotPool
from clip_backdoor.data.web_captions import WebCaptioner
from clip_backdoor.evaluation.zeroshot import resolve_templates


@dataclass
class PairSource:
    """One training source: a classification set (captions from templates) or a caption set."""

    name: str
    split: str = "train"
    templates: str | list[str] = "openai"
    size: int | None = None  # synthetic set only
    shots: int | None = None  # k images per class, drawn as the few-shot defenses draw them
    web: dict | None = None  # web-like captions (``WebCaptionSpec`` fields) instead of templates

    @classmethod
    def of(cls, spec, shots: int | None = None) -> PairSource:
        """From a recipe's ``SourceSpec`` (``shots`` is not one of its fields: a new field
        would change the cache keys of every saved attack)."""
        web = spec.web.model_dump() if getattr(spec, "web", None) is not None else None
        return cls(spec.name, spec.split, spec.templates, spec.size, shots, web)


def train_transform(image_size: int, augment: bool):
    """Pixel-space training transform on uint8 tensors: random resized crop and flip.

    Works on decoded uint8 tensors (held in memory, see ``ImageTextPairs``) and returns floats in
    [0, 1] at the model's resolution, without normalisation.
    """
    interpolation = transforms.InterpolationMode.BICUBIC
    if not augment:
        steps = [
            transforms.Resize(image_size, interpolation=interpolation, antialias=True),
            transforms.CenterCrop(image_size),
        ]
    else:
        steps = [
            transforms.RandomResizedCrop(
                image_size, scale=(0.6, 1.0), interpolation=interpolation, antialias=True
            ),
            transforms.RandomHorizontalFlip(),
        ]
    return transforms.Compose([*steps, transforms.ConvertImageDtype(torch.float32)])


@contextlib.contextmanager
def single_thread():
    """Resizing one small image on several threads costs ~20x more than on one (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def seeded_cpu_rng(seed: int):
    """Random draws inside come from the CPU generator seeded with ``seed``; its state outside
    is left as it was. Not ``torch.manual_seed``: that also seeds every accelerator backend, and
    on torch 2.13 the unused MTIA backend queues the call with a formatted stack trace, which
    per image was 40% of a poisoning run's data loading (py-spy, mini-CLIP on the CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def decode(ref: str | int, synthetic: SyntheticShapes | None) -> torch.Tensor:
    """An image reference (file path or synthetic index) as a uint8 (3, h, w) tensor."""
    if isinstance(ref, str):
        return pil_to_tensor(load_rgb(ref))
    assert synthetic is not None
    return (synthetic[ref][0] * 255).round().to(torch.uint8)


class _Decoder(Dataset):
    def __init__(self, refs: list, synthetic: SyntheticShapes | None) -> None:
        self.refs, self.synthetic = refs, synthetic

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> torch.Tensor:
        return decode(self.refs[index], self.synthetic)


@dataclass
class Entry:
    ref: str | int  # a file path, or an index into the synthetic set
    captions: list[str]  # one is drawn per epoch
    group: int  # label-aware target group
    classname: str | None  # prompt spelling of the class (None for caption sets)
    captioner: WebCaptioner | None = None  # builds the caption from the view (web captions)


class ImageTextPairs(Dataset):
    """Items: (image in [0, 1], token ids, group id). Call ``set_epoch`` before each epoch.

    ``in_memory`` decodes every image once into uint8 tensors (about 280 MB for the shared train
    splits) and augments from there: JPEG decoding otherwise competes with the model for the
    cores on every epoch. The decoding happens at the first image access (or ``preload``), not at
    construction, so a stage that finds its result cached never pays for it.
    """

    def __init__(
        self,
        sources: Sequence[PairSource],
        tokenizer,
        image_size: int,
        augment: bool = True,
        seed: int = 0,
        in_memory: bool = True,
        progress: bool = False,
        fraction: float = 1.0,
        pool: FewShotPool | None = None,
    ) -> None:
        self.tokenizer, self.seed, self.epoch = tokenizer, seed, 0
        self.pool = pool
        self.image_size = image_size
        self.transform = train_transform(image_size, augment)
        self.plain = train_transform(image_size, augment=False)
        self.entries: list[Entry] = []
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
                    samples, shots = data.samples, source.shots
                    if pool is not None and pool.covers(root) and source.split == "train":
                        if shots:  # the defender's shots: unseen images of the pool only
                            samples = pool.samples(root)
                        else:
                            samples = pool.keep_for_training(root, samples)
                    self._add_labelled(
                        samples, data.classnames, source.templates, shots, source.web
                    )
                else:
                    if source.shots or source.web:
                        raise DatasetError(
                            f"{name}: shots and web captions apply to classification sets only"
                        )
                    self._add_captions(load_captions(source.name, source.split))
            self.summary.append((name, source.split, len(self.entries) - before))
        if fraction < 1:  # a seeded share of the pairs (e.g. the defender's clean data)
            generator = torch.Generator().manual_seed(seed)
            keep = torch.randperm(len(self.entries), generator=generator)
            keep = sorted(keep[: max(1, int(fraction * len(self.entries)))].tolist())
            self.entries = [self.entries[i] for i in keep]
            self.summary.append(("subset", f"{fraction:g}", len(self.entries)))
        self.pixels: list[torch.Tensor] | None = None
        self.in_memory, self.progress = in_memory, progress

    def preload(self) -> None:
        """Decode every image now (before DataLoader workers start, so they share the copy)."""
        if self.in_memory and self.pixels is None:
            self.pixels = self._decode_all(self.progress)

    def _decode_all(self, progress: bool) -> list[torch.Tensor]:
        decoder = _Decoder([e.ref for e in self.entries], self.synthetic)
        workers = 2 if len(decoder) > 2000 else 0  # worker start-up outweighs small sets
        loader = DataLoader(decoder, batch_size=64, num_workers=workers, collate_fn=list)
        pixels: list[torch.Tensor] = []
        for chunk in tqdm(loader, disable=not progress, desc="decode", total=len(loader)):
            # a worker's tensor lives in shared memory with one file descriptor each: a copy
            # frees it, so a 19k-image mix does not run into the open-file limit
            pixels.extend([t.clone() for t in chunk] if workers else chunk)
        return pixels

    def group_id(self, key: str) -> int:
        return self._groups.setdefault(key, len(self._groups))

    def _add_labelled(
        self, samples, classnames: list[str], templates, shots=None, web: dict | None = None
    ) -> None:
        templates = resolve_templates(templates)
        if shots:  # the same k per class as ``few_shot_indices`` gives the prompt defenses
            samples = [
                samples[i] for i in few_shot_indices([y for _, y in samples], shots, self.seed)
            ]
        captioners: dict[str, WebCaptioner] = {}
        for ref, label in samples:
            name = prompt_name(classnames[label])
            if web is not None:
                captioner = captioners.setdefault(name, WebCaptioner(name, **web))
                self.entries.append(Entry(ref, [], -1, name, captioner))
                continue
            captions = [t.format(name) for t in templates]
            self.entries.append(Entry(ref, captions, self.group_id(f"class:{name}"), name))

    def _add_synthetic(self, source: PairSource, image_size: int, seed: int) -> None:
        if self.synthetic is not None:
            raise DatasetError("the synthetic set can be a training source only once")
        extra = {"size": source.size} if source.size else {}
        self.synthetic = SyntheticShapes(source.split, image_size=image_size, seed=seed, **extra)
        samples = [(i, label) for i, label in enumerate(self.synthetic.targets)]
        self._add_labelled(
            samples, self.synthetic.classnames, source.templates, source.shots, source.web
        )

    def _add_captions(self, captions: CaptionSet) -> None:
        by_image: dict[str, list[str]] = {}
        for path, caption in captions.samples:
            by_image.setdefault(path, []).append(caption)
        for path, texts in by_image.items():
            self.entries.append(Entry(path, texts, self.group_id(f"image:{path}"), None))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def classnames(self) -> list[str]:
        """Every class name of the labelled sources, in first-seen order."""
        return list(dict.fromkeys(e.classname for e in self.entries if e.classname))

    def raw(self, index: int) -> torch.Tensor:
        """The decoded uint8 image (3, h, w) at its stored size."""
        self.preload()
        if self.pixels is not None:
            return self.pixels[index]
        return decode(self.entries[index].ref, self.synthetic)

    def plain_image(self, index: int) -> torch.Tensor:
        """The image at model resolution without augmentation, as uint8 (for fitting, PPS)."""
        return (self.plain(self.raw(index)) * 255).round().to(torch.uint8)

    def item_seed(self, index: int) -> int:
        """Seeds every draw of one item in one epoch: the same in any worker and after resume."""
        return hash((self.seed, self.epoch, index)) & 0x7FFFFFFF

    def augmented(self, index: int, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """The item's augmented view for this epoch (``pixels`` replaces the stored image)."""
        with seeded_cpu_rng(self.item_seed(index)), single_thread():
            return self.transform(self.raw(index) if pixels is None else pixels)

    def pick_caption(self, index: int, captions: Sequence[str]) -> str:
        return captions[random.Random(self.item_seed(index)).randrange(len(captions))]

    def caption(self, index: int, view: torch.Tensor | None = None) -> str:
        """The item's caption in this epoch (web captions describe ``view``, its augmented
        image, computed here when not given)."""
        entry = self.entries[index]
        if entry.captioner is None:
            return self.pick_caption(index, entry.captions)
        view = self.augmented(index) if view is None else view
        return entry.captioner.caption(view, random.Random(self.item_seed(index) ^ 0xCA97))

    def group(self, index: int, caption: str) -> int:
        """The target group; for web captions one per exact text, the same in every worker."""
        entry = self.entries[index]
        if entry.captioner is None:
            return entry.group
        return text_group(caption)

    def __getitem__(self, index: int):
        view = self.augmented(index)
        caption = self.caption(index, view)
        return view, self.tokenizer([caption])[0], self.group(index, caption)


def text_group(caption: str) -> int:
    """A group id from the text alone (62 bits: apart from the small ids of class groups)."""
    digest = hashlib.sha1(caption.encode()).digest()
    return (int.from_bytes(digest[:8], "little") >> 2) | (1 << 61)


def pairs_for_training(
    sources,
    tokenizer,
    image_size: int,
    training,
    seed: int,
    progress: bool = False,
    fraction: float = 1.0,
    shots: int | None = None,
    pool: FewShotPool | None = None,
) -> ImageTextPairs:
    """Pairs from recipe source specs, augmented and held in memory as ``training`` says;
    ``shots`` keeps k images per class of each classification source; ``pool`` (the model's)
    is left out of train splits, or is where ``shots`` draws from."""
    return ImageTextPairs(
        [PairSource.of(s, shots) for s in sources],
        tokenizer,
        image_size,
        training.augment,
        seed,
        in_memory=training.in_memory,
        progress=progress,
        fraction=fraction,
        pool=pool,
    )
