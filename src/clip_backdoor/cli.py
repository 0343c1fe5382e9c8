"""``clip-backdoor``: one parser over the commands of ``clip_backdoor.commands``.

User errors (bad paths, names, fields, corrupt files) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clip_backdoor.commands import COMMANDS
from clip_backdoor.core.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clip-backdoor",
        description="Attack, defend, inspect and benchmark backdoors in CLIP models.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add(commands)
    return parser


def _one_line(error: Exception) -> str:
    """Errors re-raised by DataLoader workers carry a traceback: keep the original message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "results" and not any(e.startswith("-") for e in extra):
        args.runs += extra  # run folders after an option (`results ablation --fresh RUN...`)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except UserError as e:
        print(f"clip-backdoor: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clip-backdoor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
