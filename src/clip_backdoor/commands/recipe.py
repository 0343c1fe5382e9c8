"""``clip-backdoor recipe show FILE``: a recipe as it runs, every ``from:`` expanded.

Recipes share settings by inclusion (``from: OTHER`` at the top, ``{from: OTHER, stage: LABEL}``
for a stage), so the file alone does not say what runs. ``show`` prints the resolved recipe:
inclusions expanded, every field with its value, each stage's parameters with the method's
defaults filled in; a matrix prints its axes resolved and the cells it expands to. It
validates as ``run`` does (bad input: one line, exit 2) and runs nothing.
"""

from __future__ import annotations

import argparse

import yaml

from clip_backdoor.core.errors import UserError


def add(commands) -> None:
    rec = commands.add_parser(
        "recipe",
        help="print a recipe as it runs (every from: expanded, defaults filled); runs nothing",
        description=__doc__.split("\n\n", 1)[1],
    )
    rec.add_argument("action", choices=["show"], help="show: print the resolved recipe")
    rec.add_argument("recipe", help="recipe YAML file (see recipes/README.md)")
    rec.add_argument("--smoke", action="store_true", help="the recipe's smoke version instead")
    rec.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    print(f"# {args.recipe}, resolved (clip-backdoor recipe show)")
    print(yaml.safe_dump(resolved(args.recipe, args.smoke), sort_keys=False), end="")
    return 0


def resolved(path: str, smoke: bool = False) -> dict:
    """The mapping ``run`` would execute for the recipe file at ``path``."""
    from clip_backdoor.engine.config import parse_pretrain_recipe
    from clip_backdoor.matrix.spec import expand, is_matrix, parse_matrix
    from clip_backdoor.pipeline.recipes import (
        included_recipe,
        included_stage,
        parse_recipe,
        read_yaml,
        smoke_version,
    )

    data = included_recipe(read_yaml(path), path)
    if is_matrix(data):
        if smoke:
            raise UserError("--smoke applies to single recipes; a matrix's cells have none")
        matrix = parse_matrix(data, path)
        out = matrix.model_dump(mode="json")
        for axis in ("attacks", "defenses", "detectors", "scanners"):
            entries = out["matrix"].get(axis, [])
            out["matrix"][axis] = [included_stage(e, path) for e in entries]
        out["cells"] = [cell.name for cell in expand(matrix, path)]
        return out
    if isinstance(data, dict) and "training" in data and "stages" not in data:
        return parse_pretrain_recipe(data, path).model_dump(mode="json")
    if smoke:
        import torch

        data = smoke_version(data, path, torch.cuda.is_available())
    recipe = parse_recipe(data, path)
    out = recipe.model_dump(mode="json", exclude={"smoke"})
    for stage, spec in zip(out["stages"], recipe.stages, strict=True):
        stage["params"] = _filled(spec)
    return out


def _filled(spec) -> dict:
    """A stage's params with its method's defaults filled in (as its typed spec holds them)."""
    from clip_backdoor.stages import build_stage

    typed = getattr(build_stage(spec), "spec", None)
    if typed is None or not hasattr(typed, "model_dump"):
        return spec.params
    return typed.model_dump(mode="json")
