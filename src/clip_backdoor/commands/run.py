"""``clip-backdoor run RECIPE``: a recipe (or a matrix of them) into run folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clip_backdoor.core.errors import UserError


def add(commands) -> None:
    run = commands.add_parser("run", help="run a recipe (model, stages, evaluation)")
    run.add_argument("recipe", help="recipe YAML file (see recipes/)")
    run.add_argument("--runs-root", help="parent folder of the run folder (default: recipe's)")
    run.add_argument(
        "--seed", type=int, help="override the recipe's seed (a matrix: run only this seed)"
    )
    run.add_argument(
        "--launcher",
        choices=["local", "slurm", "submitit_local", "debug"],
        help="matrix recipes: where cells run (default: the recipe's launcher, else local: "
        "one after the other in this process; slurm: one job per cell through submitit)",
    )
    run.add_argument(
        "--cells",
        metavar="PATTERN",
        help="matrix recipes: run only the cells whose name <attack>--<column>--s<seed> "
        "matches this shell pattern (e.g. 'badnet--*--s0'); the others are left as they are",
    )
    run.add_argument(
        "--status",
        action="store_true",
        help="matrix recipes: say which cells of each attack and seed are done and which a "
        "call would run (missing, or stale: their recipe changed), and about how long they take "
        "at the pace of the finished cells; runs nothing",
    )
    run.add_argument(
        "--smoke",
        action="store_true",
        help="run the recipe's smoke instead: the same stages on the same architecture, "
        "untrained, shortened as its 'smoke:' section says (recipes/papers/); on the CPU where "
        "there is no CUDA",
    )
    run.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from clip_backdoor.matrix.spec import is_matrix
    from clip_backdoor.pipeline.recipes import included_recipe, load_recipe, read_yaml
    from clip_backdoor.pipeline.runner import run_recipe

    # resolved first, so a matrix written as ``from: OTHER_MATRIX`` plus overrides is one too
    data = included_recipe(read_yaml(args.recipe), str(args.recipe))
    if is_matrix(data):
        if args.smoke:
            raise UserError("--smoke applies to single recipes; a matrix's cells have none")
        return _run_matrix(args, data)
    if args.launcher or args.cells or args.status:
        raise UserError(
            "--launcher, --cells and --status apply to matrix recipes (kind: matrix) only"
        )
    if args.smoke:
        import torch

        from clip_backdoor.pipeline.recipes import parse_recipe, smoke_version

        data = smoke_version(data, str(args.recipe), torch.cuda.is_available())
        recipe = parse_recipe(data, str(args.recipe))
    else:
        recipe = load_recipe(args.recipe)
    if args.runs_root:
        recipe.runs_root = args.runs_root
    if args.seed is not None:
        recipe.seed = args.seed
    recipe.recipe_file = str(args.recipe)
    result = run_recipe(recipe, progress=sys.stderr.isatty())
    print(result.table)
    print(f"run folder: {result.path}")
    return 0


def _run_matrix(args: argparse.Namespace, data: dict) -> int:
    from clip_backdoor.matrix.launch import matrix_status, run_matrix
    from clip_backdoor.matrix.spec import parse_matrix

    matrix = parse_matrix(data, str(args.recipe))
    if args.runs_root:
        matrix.runs_root = args.runs_root
    if args.seed is not None:
        matrix.matrix.seeds = [args.seed]
    if args.status:
        print(matrix_status(matrix, str(args.recipe), only=args.cells))
        return 0
    folders = run_matrix(matrix, str(args.recipe), args.launcher, log=print, only=args.cells)
    print(f"cells: {len(folders)} run folders under {Path(matrix.runs_root) / matrix.name}")
    return 0
