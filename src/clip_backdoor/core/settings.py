"""Where data sets and pretrained models live, and the model a command uses when none is named:
the machine's and the project's facts, not the library's.

From the environment first (``CLIP_BACKDOOR_DATA``, ``CLIP_BACKDOOR_MODELS``: roots separated
by ``os.pathsep``), then from a settings file: ``CLIP_BACKDOOR_SETTINGS``, else the nearest
``clip-backdoor.yaml`` in the working directory or a parent. A checkout ships one that points
at its ``models/`` and the data beside it; paths in it are relative to the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from clip_backdoor.core.errors import ConfigError

FILE_NAME = "clip-backdoor.yaml"
KEYS = ("data_roots", "model_roots", "default_model")


def settings_file() -> Path | None:
    if os.environ.get("CLIP_BACKDOOR_SETTINGS"):
        return Path(os.environ["CLIP_BACKDOOR_SETTINGS"])
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / FILE_NAME).is_file():
            return folder / FILE_NAME
    return None


def settings() -> dict:
    path = settings_file()
    if path is None or not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    unknown = sorted(set(data) - set(KEYS)) if isinstance(data, dict) else ["(not a mapping)"]
    if unknown:
        raise ConfigError(f"{path}: unknown setting '{unknown[0]}' (known: {', '.join(KEYS)})")
    for key in ("data_roots", "model_roots"):  # '..' folded away: image paths name the data
        data[key] = [Path(os.path.normpath(path.parent / root)) for root in data.get(key, [])]
    return data


def _roots(env: str, key: str) -> list[Path]:
    given = os.environ.get(env, "")
    return [Path(p) for p in given.split(os.pathsep) if p] + settings().get(key, [])


def data_roots() -> list[Path]:
    """Where a data set named by its folder name is looked for, in order."""
    return _roots("CLIP_BACKDOOR_DATA", "data_roots")


def model_roots() -> list[Path]:
    """Where the project's pretrained models (``mini-clip``...) are looked for, in order."""
    return _roots("CLIP_BACKDOOR_MODELS", "model_roots")


def default_model() -> str | None:
    return settings().get("default_model")
