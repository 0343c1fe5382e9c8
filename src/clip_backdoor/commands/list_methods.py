"""``clip-backdoor list``: models and registered methods."""

from __future__ import annotations

import argparse


def add(commands) -> None:
    lst = commands.add_parser("list", help="list mini models and registered methods")
    lst.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from clip_backdoor.core.registry import REGISTRIES
    from clip_backdoor.models import MINI_CONFIGS
    from clip_backdoor.models.families import FAMILIES, FULL_TRANSFORMERS
    from clip_backdoor.models.loading import PRETRAINED_MINIS
    from clip_backdoor.pipeline.methods import register_methods
    from clip_backdoor.stages import STAGE_KINDS

    register_methods()
    print(f"mini models: {', '.join(MINI_CONFIGS)}")
    print(f"pretrained measuring models: {', '.join(PRETRAINED_MINIS)} (models/)")
    print(f"tiny models of each family (untrained): {', '.join(f.tiny for f in FAMILIES)}")
    print(f"untrained transformers (full size): {', '.join(FULL_TRANSFORMERS)}")
    for registry in REGISTRIES.values():
        print(f"{registry.plural}: {', '.join(registry.names()) or '(none yet)'}")
    print(f"recipe stage kinds: {', '.join(STAGE_KINDS.names())}")
    return 0
