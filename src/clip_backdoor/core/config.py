"""What every typed config of the package shares: strict fields, one-line validation errors.

Why a module of its own: the method modules (attacks, defenses, detectors, scanners...) validate
their params with these helpers, and ``recipes`` imports every method module to resolve stage
names; with the helpers here, below both, importing a method never imports the recipe layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clip_backdoor.core.errors import ConfigError

ALL = "all"  # a stage's method meaning every method of its registry that applies


def cache_root() -> Path:
    """Where attacks, features and built tokenizers are cached (``$CLIP_BACKDOOR_CACHE``)."""
    base = os.environ.get("CLIP_BACKDOOR_CACHE") or Path.home() / ".cache" / "clip_backdoor"
    return Path(base)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


M = TypeVar("M", bound=Strict)


class ModelSpec(Strict):
    name: str = Field(
        "mini",
        description="mini or tiny-* config, open_clip architecture, hf-hub:ORG/NAME, an "
        "open_clip or transformers folder, or a weights file",
    )
    pretrained: str | None = Field(None, description="pretrained tag or weights file")
    arch: str | None = Field(None, description="architecture of a bare weights file")
    tokenizer: str | None = Field(
        None,
        description="a local copy (save_pretrained folder) or hub name of the model's Hugging "
        "Face tokenizer, for SigLIP-family or transformers models offline",
    )
    visual_prompts: str | None = Field(
        None, description="a visual-prompt folder (vpt/rvpt) to run the image tower with"
    )


class RunSpec(Strict):
    """Fields every recipe kind has: what to call the run, where, with which model and seed."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    device: str = "cpu"
    runs_root: str = "runs"
    recipe_file: str | None = Field(None, description="set by `clip-backdoor run`: its YAML file")
    model: ModelSpec = Field(default_factory=ModelSpec)


def describe_validation_error(
    error: ValidationError, source: str, single: tuple[str, ...] = ()
) -> str:
    """One line per problem, each naming the field's dotted path.

    ``single`` names list fields the user wrote as one mapping: their "0" index is dropped.
    """
    problems = []
    for item in error.errors():
        loc = list(item["loc"])
        if len(loc) > 1 and loc[0] in single and loc[1] == 0:
            del loc[1]
        where = ".".join(str(part) for part in loc) or "(top level)"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{where}: {message}")
    return f"{source}: " + "; ".join(problems)


def read_yaml(path: str | Path) -> dict:
    """A recipe file's mapping, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of fields")
    return data


def validate(model: type[M], data: dict, source: str, single: tuple[str, ...] = ()) -> M:
    """Typed config from a mapping; errors name each field's dotted path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of fields")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, source, single)) from None
