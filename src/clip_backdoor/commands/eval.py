"""``clip-backdoor eval``: zero-shot CA (and ASR) of a model, as a one-point recipe."""

from __future__ import annotations

import argparse
import sys

from clip_backdoor.commands.common import MODEL_HELP, add_model_options
from clip_backdoor.core.errors import UserError


def add(commands) -> None:
    ev = commands.add_parser(
        "eval", help="zero-shot CA (and ASR with --trigger) of a model on a data set"
    )
    ev.add_argument("--model", help=MODEL_HELP + " (default: the settings file's default_model)")
    add_model_options(ev)
    ev.add_argument(
        "--visual-prompts",
        metavar="FOLDER",
        help="run the image tower with these deep visual prompts (a vpt/rvpt artifact)",
    )
    ev.add_argument("--data", default="synthetic", help="'synthetic', a data set name or a path")
    ev.add_argument("--split", default="test", help="data split (default: test)")
    ev.add_argument("--templates", default="openai", help="openai, simple, photo, or 'a {} x'")
    ev.add_argument("--trigger", help="trigger name, to measure ASR (identity: clean rate)")
    ev.add_argument("--target", help="target class name or label, for ASR")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--no-cache", action="store_true", help="do not use the feature cache")
    ev.add_argument("--runs-root", default="runs", help="parent folder of run folders")
    ev.add_argument("--name", default="eval", help="run name (folder suffix)")
    ev.set_defaults(func=main)


def _eval_recipe(args: argparse.Namespace):
    from clip_backdoor.core.settings import default_model
    from clip_backdoor.pipeline.recipes import parse_recipe

    model = args.model or default_model()
    if model is None:
        raise UserError("no --model given and no default_model in a clip-backdoor.yaml here")

    evaluation = {
        "templates": args.templates,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "cache": not args.no_cache,
    }
    if args.trigger:
        evaluation["trigger"] = {"name": args.trigger}
    if args.target is not None:
        evaluation["target"] = int(args.target) if args.target.isdigit() else args.target
    return parse_recipe(
        {
            "name": args.name,
            "seed": args.seed,
            "device": args.device,
            "runs_root": args.runs_root,
            "model": {
                "name": model,
                "pretrained": args.pretrained,
                "arch": args.arch,
                "tokenizer": args.tokenizer,
                "visual_prompts": args.visual_prompts,
            },
            "data": {"name": args.data, "split": args.split},
            "evaluation": evaluation,
        },
        source="command line",
    )


def main(args: argparse.Namespace) -> int:
    from clip_backdoor.pipeline.runner import run_recipe

    result = run_recipe(_eval_recipe(args), progress=sys.stderr.isatty())
    print(result.table)
    print(f"run folder: {result.path}")
    return 0
