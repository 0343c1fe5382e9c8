"""``clip-backdoor compat``: every method on a tiny model of every family."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(commands) -> None:
    compat = commands.add_parser(
        "compat",
        help="run every method on a tiny model of every CLIP family; write the table",
        description="Run every method that applies, a step or two each, on a randomly "
        "initialised tiny model of each family (open_clip ViT, quick-gelu ViT, RN50, ConvNeXt, "
        "EVA02, SigLIP, SigLIP2, MobileCLIP, PE-Core, transformers CLIP and SigLIP), render the "
        "report of each run, and write OUT/compatibility.md/.csv and the table in docs/models.md. "
        "Exit 1 when a method fails on a family.",
    )
    compat.add_argument("--families", help="comma-separated tiny models (default: all)")
    compat.add_argument("--out", default="results", help="folder of the table (default: results)")
    compat.add_argument(
        "--readme", default="docs/models.md", help="page whose table is replaced (between markers)"
    )
    compat.add_argument("--no-readme", action="store_true", help="leave that page alone")
    compat.add_argument("--runs-root", default="runs/compat", help="parent of the run folders")
    compat.add_argument(
        "--recipe",
        metavar="MODEL",
        help="print the full-size smoke recipe of MODEL instead (one step of every "
        "encode-level method at its native resolution; recipes/families/)",
    )
    compat.add_argument("--tokenizer", help="with --recipe: the model's tokenizer (see eval)")
    compat.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from clip_backdoor.compat.table import run_table

    if args.recipe:
        return _print_smoke_recipe(args.recipe, args.tokenizer)
    only = args.families.split(",") if args.families else None
    readme = None if args.no_readme else Path(args.readme)
    page, results = run_table(args.runs_root, Path(args.out), readme, only)
    for r in results:
        print(f"{r.tiny:20s} {r.family:20s} {r.seconds:6.1f} s  {r.error or 'every stage ran'}")
    print(f"table: {page}")
    return 1 if any(r.error for r in results) else 0


def _print_smoke_recipe(name: str, tokenizer: str | None) -> int:
    import yaml

    from clip_backdoor.compat.recipe import smoke_recipe
    from clip_backdoor.models import load_clip

    model = load_clip(name, tokenizer=tokenizer).model
    header = (
        f"# Full-size smoke of {model.family} ({name}, untrained, {model.image_size} px): one\n"
        "# step of every encode-level method (clip-backdoor compat --recipe; compat/recipe.py).\n"
        "#   clip-backdoor run THIS_FILE\n#   clip-backdoor results families runs/*-smoke_*\n"
    )
    print(header + yaml.safe_dump(smoke_recipe(model, name, tokenizer), sort_keys=False), end="")
    return 0
