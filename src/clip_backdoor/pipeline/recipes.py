"""Typed recipe configs: a YAML file names the model, the data, stages and the evaluation.

Unknown or misspelt fields are errors that name the field (``extra="forbid"``), so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from clip_backdoor.core.config import (  # noqa: F401  (Strict, validate: re-exported)
    ALL,
    ModelSpec,
    RunSpec,
    Strict,
    describe_validation_error,
    read_yaml,
    validate,
)
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import REGISTRIES
from clip_backdoor.stages import STAGE_KINDS


class DataSpec(Strict):
    name: str = Field("synthetic", description="'synthetic', a data set name or a path")
    split: str = "test"
    size: int | None = Field(None, gt=0, description="number of images (synthetic set only)")
    classes: Literal["all", "base", "novel"] = Field(
        "all", description="CoOp's base (first half) or novel (second half) classes"
    )
    shift: Literal["none", "grayscale", "blur", "sketch"] = Field(
        "none", description="a shifted copy of the set (the cross-domain stand-in)"
    )

    @model_validator(mode="after")
    def _size_only_for_synthetic(self) -> DataSpec:
        if self.size is not None and self.name != "synthetic":
            raise ValueError("'size' applies only to the synthetic set")
        return self


class MethodSpec(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class EvaluationSpec(Strict):
    clean: bool = Field(True, description="also evaluate the model before the first stage")
    quality: bool = Field(True, description="PSNR/SSIM of the trigger on the evaluation set")
    templates: str | list[str] = "openai"
    trigger: MethodSpec | None = None
    target: str | int | None = Field(None, description="target class name or label (for ASR)")
    topk: list[int] = Field(default_factory=lambda: [1, 5])
    batch_size: int = Field(256, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    cache: bool = True
    resistivity: int = Field(
        0, ge=0, description="test images for Perturbation Resistivity at every point (0: off)"
    )
    validation: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="a seeded part of the first evaluation set held out as clean validation "
        "images for the stages (He et al.'s clean means and thresholds) and left out of every "
        "reported number (default: 0.2 when a stage needs it, else none)",
    )
    add_target: bool = Field(
        False,
        description="insert the target name at index 0 in sets that lack it, so ASR is measured "
        "on them too (cross-dataset protocols); always on after a prompt-learner stage",
    )


class StageSpec(Strict):
    kind: str = Field(
        description="attack, defense, detection, prompt, analysis, scan or data_scan: a kind "
        "registered in stages.STAGE_KINDS by the package of its methods"
    )
    method: str
    label: str | None = Field(None, description="row name in the tables (default: method)")
    evaluate: bool = Field(True, description="evaluate the model after this stage")
    stack: bool = Field(
        False,
        description="defense: act on the previous defense's result (default: every defense in a"
        " row starts from the model as the stages before them left it, so they can be compared)",
    )
    params: dict[str, Any] = Field(default_factory=dict)


class Recipe(RunSpec):
    matrix_cell: dict[str, Any] | None = Field(
        None, description="set by a matrix recipe: the cell's attack, column, kind and matrix"
    )
    data: list[DataSpec] = Field(
        default_factory=lambda: [DataSpec()], min_length=1, description="evaluation set(s)"
    )
    stages: list[StageSpec] = Field(default_factory=list)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    smoke: dict[str, Any] | None = Field(
        None,
        description="what `run --smoke` replaces: keys of this recipe (mappings key by key), "
        "and `stages: {LABEL: params}` for the stages' params (recipes.smoke_version)",
    )


def parse_recipe(data: dict, source: str = "recipe") -> Recipe:
    from clip_backdoor.pipeline.methods import register_methods

    register_methods()
    data = included_recipe(data, source)
    single: tuple[str, ...] = ()
    if isinstance(data, dict) and isinstance(data.get("data"), dict):
        data, single = {**data, "data": [data["data"]]}, ("data",)  # one set: a list of one
    if isinstance(data, dict) and isinstance(data.get("stages"), list):
        data = {**data, "stages": [included_stage(stage, source) for stage in data["stages"]]}
    recipe = validate(Recipe, data, source, single)
    for index, stage in enumerate(recipe.stages):
        try:
            STAGE_KINDS.get(stage.kind).check(stage.method)
        except ConfigError as error:
            field = "method" if stage.kind in STAGE_KINDS else "kind"
            raise ConfigError(f"{source}: stages.{index}.{field}: {error}") from None
    if recipe.evaluation.trigger and recipe.evaluation.trigger.name not in REGISTRIES["trigger"]:
        known = ", ".join(REGISTRIES["trigger"].names())
        raise ConfigError(
            f"{source}: evaluation.trigger.name: unknown trigger "
            f"'{recipe.evaluation.trigger.name}' (known: {known})"
        )
    return recipe


def included_recipe(data, source: str, depth: int = 0):
    """``from: RECIPE`` at the top level: that recipe with the keys given here replacing its
    own (e.g. the same experiment on another measuring model: ``model: {name: mini-clip-v2}``
    and a new ``name``), so an experiment is written once for every model it runs on."""
    if not isinstance(data, dict) or "from" not in data:
        return data
    if depth > 8:
        raise ConfigError(f"{source}: recipes included from each other in a loop")
    base = included_recipe(read_yaml(data["from"]), str(data["from"]), depth + 1)
    return {**base, **{k: v for k, v in data.items() if k != "from"}}


def included_stage(stage, source: str, depth: int = 0):
    """``{from: RECIPE, stage: LABEL}`` is that recipe's stage of that label (or method), with
    any other keys given overriding its own (``params`` key by key): recipes share an attack
    without copying it, and share its cached artifact too, since the parameters are the same.
    The other recipe's stage may itself be included from a third one."""
    if not isinstance(stage, dict) or "from" not in stage:
        return stage
    if depth > 8:
        raise ConfigError(f"{source}: stages included from each other in a loop")
    path, wanted = stage["from"], stage.get("stage")
    others = [included_stage(o, str(path), depth + 1) for o in read_yaml(path).get("stages", [])]
    others = [o for o in others if isinstance(o, dict)]
    for field in ("label", "method"):  # a label names one stage; a method maybe several
        for other in others:
            if other.get(field) == wanted:
                rest = {k: v for k, v in stage.items() if k not in ("from", "stage")}
                if isinstance(rest.get("params"), dict):  # params given replace one by one
                    rest["params"] = {**other.get("params", {}), **rest["params"]}
                return {**other, **rest}
    raise ConfigError(f"{source}: stage from {path}: it has no stage labelled '{wanted}'")


def merged(base: Any, override: Any) -> Any:
    """``override`` over ``base``: mappings key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merged(base.get(key), value)
        return out
    return copy.deepcopy(override)


def smoke_version(data: dict, source: str, cuda: bool) -> dict:
    """``run --smoke``: the recipe shortened to a smoke of the same path, or one line when it
    has no ``smoke:``.

    Why: a paper's recipe (``recipes/papers/``) needs a GPU, the weights and hours; before
    spending them, a user (and ``make gpu-check``) runs the same stages on the same
    architecture, untrained, a few steps on a few images. What "a few" means is the recipe's own
    ``smoke:`` section, next to the settings it shortens: its keys replace the recipe's
    (mappings key by key, ``merged``), and ``smoke.stages`` maps a stage label to the params
    that replace its own. Always: ``pretrained`` dropped (nothing to download), the run named
    ``<name>_smoke``, and a CUDA device falls back to the CPU where there is none.
    """
    smoke = data.get("smoke") if isinstance(data, dict) else None
    if not smoke:
        raise ConfigError(
            f"{source}: no 'smoke' section, so nothing says how to shorten its stages "
            "(the recipes under recipes/papers/ have one; --smoke applies to those)"
        )
    if not isinstance(smoke, dict):
        raise ConfigError(f"{source}: smoke: a mapping of the keys to replace")
    out = {k: copy.deepcopy(v) for k, v in data.items() if k != "smoke"}
    out["stages"] = [included_stage(s, source) for s in out.get("stages", [])]
    stages = smoke.get("stages", {})
    labels = [s.get("label") or s.get("method") for s in out.get("stages", [])]
    unknown = sorted(set(stages) - set(labels))
    if unknown:
        raise ConfigError(
            f"{source}: smoke.stages: no stage labelled '{unknown[0]}' (stages: "
            f"{', '.join(str(label) for label in labels)})"
        )
    for key, value in smoke.items():
        if key != "stages":
            out[key] = merged(out.get(key), value)
    for stage, label in zip(out.get("stages", []), labels, strict=True):
        if label in stages:
            stage["params"] = merged(stage.get("params", {}), stages[label])
    out["name"] = f"{out['name']}_smoke"
    model = dict(out.get("model") or {})
    model.pop("pretrained", None)  # the same architecture, untrained
    out["model"] = model
    if str(out.get("device", "cpu")).startswith("cuda") and not cuda:
        out["device"] = "cpu"
    return out


def load_recipe(path: str | Path) -> Recipe:
    return parse_recipe(read_yaml(path), str(path))
