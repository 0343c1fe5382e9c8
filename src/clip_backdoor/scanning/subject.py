"""What a scan loads: the model (or the prompt learner and its CLIP) and clean images.

A scan judges a model as a user downloaded it, so loading never opens an artifact's trigger,
target or poison files (``trigger.json``, ``trigger.safetensors``, ``backdoor.json``,
``poison.json``): a backdoor artifact is read as the open_clip folder it also is, and a
prompt-learner folder through its ``prompt.json`` and ``prompt.safetensors`` only.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.data import load_classification
from clip_backdoor.data.fewshot import class_part
from clip_backdoor.models import load_clip
from clip_backdoor.models.image_tower import ImageTower
from clip_backdoor.prompts import is_prompt_folder, load_prompts, prompt_info
from clip_backdoor.scanning.base import ScanImages, ScanSubject


def load_subject(
    name: str,
    pretrained: str | None = None,
    arch: str | None = None,
    device: str = "cpu",
    tokenizer: str | None = None,
) -> ScanSubject:
    if is_prompt_folder(name):
        info = prompt_info(name)
        model, _, tokenizer = load_clip(
            info["model"], info.get("pretrained"), device=device, tokenizer=tokenizer
        )
        learner = load_prompts(name, model, tokenizer)
        return ScanSubject(model.eval(), tokenizer, str(name), learner, info.get("classnames"))
    model, _, tokenizer = load_clip(name, pretrained, arch=arch, device=device, tokenizer=tokenizer)
    return ScanSubject(model.eval(), tokenizer, str(name))


def architecture(subject: ScanSubject) -> dict:
    """What must match for two models' scores to be comparable: the family, the resolution,
    the embedding width and, for an open_clip ViT, the tower's shape."""
    model = subject.model
    found = {
        "family": model.family,
        "image_size": model.image_size,
        "embed_dim": model.model_cfg.get("embed_dim"),
    }
    try:
        tower = ImageTower.of(model)
    except ConfigError:
        return found
    return {**found, "layers": tower.layers, "width": tower.width, "patch_size": tower.patch_size}


def check_reference(subject: ScanSubject, reference: ScanSubject) -> None:
    """A reference judges scores only if it computes the same kind of features."""
    mine, theirs = architecture(subject), architecture(reference)
    if mine["family"] != theirs["family"]:
        raise ConfigError(
            f"--reference {reference.name} is another family ({theirs['family']}) than "
            f"{subject.name} ({mine['family']}): give a clean model of the same family and "
            "architecture"
        )
    if mine != theirs:
        show = ", ".join(f"{k} {theirs[k]} vs {mine[k]}" for k in mine if mine[k] != theirs[k])
        raise ConfigError(
            f"--reference {reference.name} is another architecture than {subject.name} ({show}):"
            " give a clean model of the same architecture"
        )


def scan_images(
    name: str,
    split: str,
    count: int,
    image_size: int,
    transform,
    seed: int,
    size: int | None = None,
    progress: bool = False,
    classes: str = "all",
) -> ScanImages:
    """``count`` images of a split (``classes``: all, or CoOp's base/novel half) drawn with
    ``seed``, as uint8 at the model's resolution."""
    data = load_classification(name, split, transform, image_size=image_size, seed=seed, size=size)
    data = class_part(data, classes)
    if len(data) < count:
        raise ConfigError(
            f"{name}/{split} has {len(data)} images; the scan needs {count} (lower --images)"
        )
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(data), generator=generator)[:count].tolist()
    pixels = torch.empty((count, 3, image_size, image_size), dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.long)
    for i, index in enumerate(tqdm(picks, desc="images", disable=not progress, leave=False)):
        image, label = data[index]
        pixels[i] = (image * 255).round().clamp(0, 255).to(torch.uint8)
        labels[i] = int(label)
    source = f"{name}/{split}" + ("" if classes == "all" else f":{classes}")
    return ScanImages(pixels, labels, list(data.classnames), source)
