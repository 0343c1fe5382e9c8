"""What several commands share: the model options, the run options, the model help."""

from __future__ import annotations

import argparse

MODEL_HELP = (
    "mini or tiny-* config, open_clip architecture (e.g. ViT-B-16-SigLIP), hf-hub:ORG/NAME, an "
    "open_clip or Hugging Face transformers folder, or a weights file"
)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", help="pretrained tag (e.g. openai) or weights file")
    parser.add_argument("--arch", help="architecture of a bare weights file (else inferred)")
    parser.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="a local copy of the model's Hugging Face tokenizer (a save_pretrained folder; "
        "SigLIP families and transformers checkpoints offline), or a hub name",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--seed, --device and --runs-root, the same for every command that makes one run folder."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs-root", default="runs", help="parent folder of the run folder")
