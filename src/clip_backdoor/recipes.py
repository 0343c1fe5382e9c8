"""Typed recipe configs: a YAML file names the model, the data, stages and the evaluation.

Unknown or misspelt fields are errors that name the field (``extra="forbid"``), so a typo never
silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clip_backdoor.errors import ConfigError
from clip_backdoor.registry import REGISTRIES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    name: str = Field("mini", description="mini config, open_clip architecture, folder or file")
    pretrained: str | None = Field(None, description="pretrained tag or weights file")
    arch: str | None = Field(None, description="architecture of a bare weights file")


class DataSpec(Strict):
    name: str = Field("synthetic", description="'synthetic', a data set name or a path")
    split: str = "test"
    size: int | None = Field(None, gt=0, description="number of images (synthetic set only)")

    @model_validator(mode="after")
    def _size_only_for_synthetic(self) -> DataSpec:
        if self.size is not None and self.name != "synthetic":
            raise ValueError("'size' applies only to the synthetic set")
        return self


class MethodSpec(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class EvaluationSpec(Strict):
    templates: str | list[str] = "openai"
    trigger: MethodSpec | None = None
    target: str | int | None = Field(None, description="target class name or label (for ASR)")
    topk: list[int] = Field(default_factory=lambda: [1, 5])
    batch_size: int = Field(256, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    cache: bool = True


class StageSpec(Strict):
    kind: Literal["attack", "defense", "detection"]
    method: str
    params: dict[str, Any] = Field(default_factory=dict)


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    device: str = "cpu"
    runs_root: str = "runs"
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    stages: list[StageSpec] = Field(default_factory=list)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)


STAGE_REGISTRY = {"attack": "attack", "defense": "defense", "detection": "detector"}


def describe_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, each naming the field's dotted path."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{where}: {message}")
    return f"{source}: " + "; ".join(problems)


def parse_recipe(data: dict, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of fields")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, source)) from None
    for index, stage in enumerate(recipe.stages):
        registry = REGISTRIES[STAGE_REGISTRY[stage.kind]]
        if stage.method not in registry:
            known = ", ".join(registry.names()) or "none registered yet"
            raise ConfigError(
                f"{source}: stages.{index}.method: unknown {stage.kind} '{stage.method}' "
                f"(known: {known})"
            )
    if recipe.evaluation.trigger and recipe.evaluation.trigger.name not in REGISTRIES["trigger"]:
        known = ", ".join(REGISTRIES["trigger"].names())
        raise ConfigError(
            f"{source}: evaluation.trigger.name: unknown trigger "
            f"'{recipe.evaluation.trigger.name}' (known: {known})"
        )
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_recipe(data, str(path))
