"""``kind: matrix`` recipes: lists of attacks, defenses, detectors, scanners and seeds.

Each cell is an ordinary recipe (the attack, then one defense, detector or scan stage) with its
own run folder under ``<runs_root>/<matrix name>/``; the attack's artifact, the defenses' models
and the features are cached as for any run, so cells that share an attack train it once. A
cell is done when a folder of its name holds ``metrics.json`` and was run from the same recipe
(its fingerprint, in ``matrix_cell``): a second call runs only the rest, and a cell whose recipe
changed since (a setting, an included recipe's params) runs again instead of being kept stale.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from clip_backdoor.core.config import RunSpec, Strict, validate
from clip_backdoor.core.errors import ConfigError

NONE = "none"  # the "no defense" column: the attacked model as it is


class MatrixAxes(Strict):
    attacks: list[dict[str, Any]] = Field(min_length=1, description="attack stages or includes")
    defenses: list[dict[str, Any] | Literal["none"]] = Field(
        default_factory=lambda: [NONE], description="defense stages ('none': the attacked model)"
    )
    detectors: list[dict[str, Any]] = Field(default_factory=list)
    scanners: list[dict[str, Any]] = Field(default_factory=list)
    seeds: list[int] = Field([0], min_length=1)
    min_attack_asr: float | None = Field(
        None,
        ge=0,
        le=1,
        description="an attack and seed whose 'none' cell measures an ASR (0-1) below this runs "
        "none of its other cells: there is no backdoor for them to measure (None: run all)",
    )

    @model_validator(mode="after")
    def _gate_needs_none(self) -> MatrixAxes:
        if self.min_attack_asr is not None and NONE not in self.defenses:
            raise ValueError("min_attack_asr reads the 'none' cell: add 'none' to the defenses")
        return self


class LauncherSpec(Strict):
    """Where cells run: here one after the other, or as submitit jobs."""

    kind: Literal["local", "slurm", "submitit_local", "debug"] = Field(
        "local",
        description="local: in this process; slurm: one Slurm job per cell (submitit); "
        "submitit_local / debug: submitit's LocalExecutor / DebugExecutor (the same path, no "
        "cluster)",
    )
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int = Field(2, ge=1)
    mem_gb: int = Field(24, ge=1)
    timeout_min: int = Field(120, ge=1, description="per cell")
    partition: str | None = None
    parallel: int = Field(16, ge=1, description="cells in flight at once (Slurm array limit)")


class MatrixRecipe(RunSpec):
    kind: Literal["matrix"]
    data: list[dict[str, Any]] = Field(min_length=1, description="evaluation set(s), as recipes")
    evaluation: dict[str, Any] = Field(default_factory=dict)
    matrix: MatrixAxes
    launcher: LauncherSpec = Field(default_factory=LauncherSpec)


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its name and the recipe mapping it runs."""

    name: str
    attack: str
    column: str  # the defense, detector or scanner label ('none' for the attacked model)
    kind: str  # defense | detection | scan | none
    seed: int
    recipe: dict

    def folder(self, root: Path) -> Path | None:
        """Its newest finished run folder under ``root`` run from this very recipe, if any."""
        done = sorted(p for p in root.glob(f"*-{self.name}") if (p / "metrics.json").is_file())
        current = [p for p in done if run_fingerprint(p) == self.recipe["matrix_cell"]["recipe"]]
        return current[-1] if current else None

    def stale(self, root: Path) -> bool:
        """A finished folder of this cell exists, but from another recipe (it runs again)."""
        return self.folder(root) is None and any(
            (p / "metrics.json").is_file() for p in root.glob(f"*-{self.name}")
        )


def recipe_fingerprint(parsed) -> str:
    """What a cell's numbers depend on: its parsed recipe (includes resolved, defaults filled),
    less where it is written and the cell bookkeeping."""
    body = parsed.model_dump(mode="json", exclude={"runs_root", "recipe_file", "matrix_cell"})
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def run_fingerprint(folder: Path) -> str | None:
    """The recipe fingerprint a finished cell folder was run from (None: before fingerprints)."""
    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    return (config.get("matrix_cell") or {}).get("recipe")


def is_matrix(data: dict) -> bool:
    return isinstance(data, dict) and data.get("kind") == "matrix"


def parse_matrix(data: dict, source: str) -> MatrixRecipe:
    return validate(MatrixRecipe, data, source)


def _label(stage: dict, source: str) -> str:
    """A stage's column name: its label, else the trigger it poisons with, else its method."""
    from clip_backdoor.pipeline.recipes import included_stage

    resolved = included_stage(stage, source)
    if stage.get("label"):
        return str(stage["label"])
    trigger = resolved.get("params", {}).get("trigger")
    if isinstance(trigger, dict) and "name" in trigger:
        return str(trigger["name"])
    return str(resolved.get("label") or resolved.get("method") or "?")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def expand(matrix: MatrixRecipe, source: str) -> list[Cell]:
    """Every cell, validated as a recipe before any runs (bad input: one line, nothing run)."""
    from clip_backdoor.pipeline.recipes import parse_recipe
    from clip_backdoor.stages import build_stage

    axes = matrix.matrix
    base = {
        "model": matrix.model.model_dump(),
        "device": matrix.device,
        "data": matrix.data,
        "evaluation": matrix.evaluation,
        "runs_root": str(Path(matrix.runs_root) / matrix.name),
    }
    columns: list[tuple[str, str, dict | None]] = []
    for entry in axes.defenses:
        if entry == NONE:
            columns.append((NONE, "none", None))
        else:
            columns.append((_label(entry, source), "defense", {"kind": "defense", **entry}))
    for kind, entries in (("detection", axes.detectors), ("scan", axes.scanners)):
        for entry in entries:
            columns.append((_label(entry, source), kind, {"kind": kind, **entry}))
    cells, seen = [], set()
    for attack in axes.attacks:
        attack_label = _label(attack, source)
        attack_stage = {"kind": "attack", **attack, "label": "attack"}
        for column, kind, stage in columns:
            for seed in axes.seeds:
                name = _slug(f"{attack_label}--{column}--s{seed}")
                if name in seen:
                    raise ConfigError(f"{source}: two cells are both named '{name}': give labels")
                seen.add(name)
                stages = [attack_stage] + ([stage] if stage else [])
                recipe = {**base, "name": name, "seed": seed, "stages": stages}
                recipe["matrix_cell"] = {
                    "matrix": matrix.name,
                    "attack": attack_label,
                    "column": column,
                    "kind": kind,
                }
                recipe["recipe_file"] = source
                parsed = parse_recipe(recipe, f"{source}: cell {name}")  # unknown methods
                recipe["matrix_cell"]["recipe"] = recipe_fingerprint(parsed)
                for stage_spec in parsed.stages:  # and bad params: one line, before any runs
                    try:
                        build_stage(stage_spec)
                    except ConfigError as e:
                        raise ConfigError(f"{source}: cell {name}: {e}") from None
                cells.append(Cell(name, attack_label, column, kind, seed, recipe))
    return cells
