"""``clip-backdoor info MODEL``: what a model is and which methods apply."""

from __future__ import annotations

import argparse

from clip_backdoor.commands.common import MODEL_HELP, add_model_options


def add(commands) -> None:
    info = commands.add_parser(
        "info",
        help="what a model is: family, towers, preprocessing, tokenizer, objective, methods",
        description="Load MODEL as every command does and print its family, towers, "
        "resolution, normalisation, tokenizer, objective (InfoNCE or SigLIP's sigmoid loss), "
        "parameter count, and which methods apply to it (or why not).",
    )
    info.add_argument("model", help=MODEL_HELP)
    add_model_options(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import json

    from clip_backdoor.compat.info import format_info, model_info
    from clip_backdoor.models import load_clip

    model = load_clip(args.model, args.pretrained, arch=args.arch, tokenizer=args.tokenizer).model
    info = model_info(model)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
