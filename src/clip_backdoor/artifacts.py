"""Backdoor artifacts: one folder that holds a backdoored model and everything to trigger it.

Layout (the model part is open_clip's, so ``load_clip``, ``--model FOLDER`` and open_clip's
``local-dir:`` all load it):

    open_clip_config.json, open_clip_model.safetensors   the model
    trigger.json          {"name", "params"}: rebuilds the trigger from the registry
    trigger.safetensors   the trigger's state (patch, pattern, grid, ...)
    backdoor.json         target class name, attack name and config, seed, summary numbers
    poison.json           poisoned indices and captions (attacks that poison data)

Folders are written to a temporary sibling and renamed into place, so a crash never leaves a
half-written artifact. Trained results are cached under a key of everything that defines them,
so running the same attack (or defense) again reuses its folder instead of training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clip_backdoor.core.errors import ConfigError, ModelLoadError
from clip_backdoor.models import PixelCLIP, load_clip, save_clip
from clip_backdoor.triggers import Trigger
from clip_backdoor.triggers import get as get_trigger

BACKDOOR_FILE = "backdoor.json"
TRIGGER_FILE = "trigger.json"
TRIGGER_STATE = "trigger.safetensors"
POISON_FILE = "poison.json"
FORMAT_VERSION = 1  # part of cache keys: bump when what an artifact holds changes


def cache_key(*parts: object) -> str:
    text = json.dumps([FORMAT_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / BACKDOOR_FILE).is_file()


def save_trigger(trigger: Trigger, folder: Path) -> None:
    (folder / TRIGGER_FILE).write_text(
        json.dumps({"name": trigger.name, "params": trigger.params}, indent=2) + "\n"
    )
    state = {k: v.detach().cpu().contiguous() for k, v in trigger.state_dict().items()}
    save_file(state, str(folder / TRIGGER_STATE))
    for item in folder.iterdir():
        item.chmod(0o644)  # an artifact is for sharing (temporary files are private)


def load_trigger(folder: str | Path) -> Trigger:
    """The trigger saved in ``folder``; a missing or mismatched file is a one-line error."""
    folder = Path(folder)
    spec_file, state_file = folder / TRIGGER_FILE, folder / TRIGGER_STATE
    for needed in (spec_file, state_file):
        if not needed.is_file():
            raise ModelLoadError(f"backdoor artifact {folder} has no {needed.name}")
    try:
        spec = json.loads(spec_file.read_text())
        trigger = get_trigger(spec["name"])(**spec.get("params", {}))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{spec_file} is not a valid trigger description ({e})") from None
    try:
        state = load_file(str(state_file))
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{state_file} is unreadable ({e})") from None
    try:
        trigger.load_state_dict(state)
    except ConfigError as e:
        raise ModelLoadError(f"{state_file} does not match {spec_file}: {e}") from None
    return trigger


@dataclass
class Backdoor:
    """A loaded artifact: the model, its trigger and the target class name."""

    model: PixelCLIP
    preprocess: object
    tokenizer: object
    trigger: Trigger
    target: str
    info: dict


def load_backdoor(folder: str | Path, device: str = "cpu") -> Backdoor:
    folder = Path(folder)
    if not is_artifact(folder):
        raise ModelLoadError(f"{folder} is not a backdoor artifact (no {BACKDOOR_FILE})")
    info = json.loads((folder / BACKDOOR_FILE).read_text())
    if not info.get("target"):
        raise ModelLoadError(f"{folder / BACKDOOR_FILE} names no target class")
    trigger = load_trigger(folder)
    model, preprocess, tokenizer = load_clip(folder, device=device)
    return Backdoor(model, preprocess, tokenizer, trigger, info["target"], info)


def write_folder(destination: Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder with ``fill(tmp)`` beside ``destination``, then rename it into place."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
    try:
        fill(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; an artifact is for sharing
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return destination


def save_backdoor(
    destination: str | Path,
    model: PixelCLIP,
    trigger: Trigger,
    target: str,
    info: dict,
    poison: dict | None = None,
) -> Path:
    def fill(folder: Path) -> None:
        save_clip(model, folder, overwrite=True)
        save_trigger(trigger, folder)
        (folder / BACKDOOR_FILE).write_text(json.dumps({**info, "target": target}, indent=2) + "\n")
        if poison is not None:
            (folder / POISON_FILE).write_text(json.dumps(poison) + "\n")

    return write_folder(Path(destination), fill)


def link_into(source: Path, destination: Path) -> Path:
    """A copy of an artifact folder made of hard links where possible (no duplicated weights)."""

    def fill(folder: Path) -> None:
        for item in source.iterdir():
            if item.is_file():
                try:
                    os.link(item, folder / item.name)
                except OSError:
                    shutil.copy2(item, folder / item.name)

    return write_folder(destination, fill)
