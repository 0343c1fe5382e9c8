"""``clip-backdoor pretrain RECIPE``: contrastive (pre)training, resumable."""

from __future__ import annotations

import argparse
import sys

from clip_backdoor.core.errors import UserError


def add(commands) -> None:
    pre = commands.add_parser(
        "pretrain", help="contrastive (pre)training of a CLIP on image-caption pairs"
    )
    pre.add_argument("recipe", nargs="?", help="pretraining recipe YAML (see recipes/)")
    pre.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    pre.add_argument("--runs-root", help="parent folder of the run folder (default: recipe's)")
    pre.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from clip_backdoor.engine.config import load_pretrain_recipe
    from clip_backdoor.engine.pretrain import pretrain

    if (args.recipe is None) == (args.resume is None):
        raise UserError("give a recipe, or --resume RUN_DIR (not both)")
    recipe = load_pretrain_recipe(args.recipe) if args.recipe else None
    if recipe is not None and args.runs_root:
        recipe.runs_root = args.runs_root
    result = pretrain(recipe, resume=args.resume, progress=sys.stderr.isatty())
    if result is not None:  # the main process reports
        print(result.table)
        print(f"run folder: {result.path}")
    return 0
