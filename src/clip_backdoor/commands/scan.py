"""``clip-backdoor scan MODEL``: is a checkpoint or prompt learner backdoored?"""

from __future__ import annotations

import argparse
import sys

from clip_backdoor.commands.common import MODEL_HELP, add_model_options, add_run_options


def add(commands) -> None:
    scan = commands.add_parser(
        "scan",
        help="is a checkpoint or prompt learner backdoored? (no trigger known)",
        description="Scan a CLIP checkpoint or a prompt learner for a backdoor from clean images "
        "alone: DECREE (does a small patch collapse the image embeddings?), target_search "
        "(Neural Cleanse through the zero-shot head: is one class reachable with a much smaller "
        "mask?) and prompt_inspector (prompt learners: is one class reachable with a tiny "
        "perturbation through the learner, not through the plain CLIP?). An artifact's trigger, "
        "target and poison files are never read. Writes a run folder with scan.json, "
        "tables/scan.md and figures/scan_triggers.png.",
        epilog="exit codes: 0 scan done (and the verdict does not fail --fail-on); 1 the verdict "
        "fails --fail-on (backdoored: only 'backdoored' fails; inconclusive: 'backdoored' and "
        "'inconclusive' fail); 2 bad input (one line on stderr, no run folder left); 130 "
        "interrupted.",
    )
    scan.add_argument("model", help=MODEL_HELP + ", backdoor artifact or prompt-learner folder")
    scan.add_argument("--data", required=True, help="clean images: a data set name or a path")
    scan.add_argument("--split", default="train", help="split of --data (default: train)")
    scan.add_argument("--images", type=int, default=256, help="seeded images drawn (default 256)")
    scan.add_argument("--size", type=int, help="images of the synthetic set (synthetic only)")
    add_model_options(scan)
    scan.add_argument(
        "--scanners", default="all", help="comma-separated scanners (default: all that apply)"
    )
    scan.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="SCANNER.KEY=VALUE",
        help="a scanner setting, e.g. decree.steps=300 (repeatable)",
    )
    scan.add_argument(
        "--budget",
        default="default",
        help="how much the scan spends: fast (minutes for a ViT-B/32 at 224 px on a CPU), "
        "default, thorough; each scanner reports its image passes (default: default)",
    )
    scan.add_argument(
        "--reference",
        metavar="MODEL",
        help="a clean model of the same architecture (e.g. the "
        "public base MODEL was fine-tuned from): thresholds become relative to its scores",
    )
    scan.add_argument("--reference-pretrained", help="pretrained tag or weights of --reference")
    scan.add_argument(
        "--fail-on",
        metavar="VERDICT",
        help="exit 1 when the verdict is this bad: backdoored or inconclusive",
    )
    add_run_options(scan)
    scan.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from clip_backdoor.pipeline.scan import ScanRequest, exit_code, parse_params, run_scan

    request = ScanRequest(
        model=args.model,
        data=args.data,
        pretrained=args.pretrained,
        arch=args.arch,
        split=args.split,
        images=args.images,
        size=args.size,
        scanners=args.scanners.split(",") if args.scanners != "all" else "all",
        params=parse_params(args.param),
        budget=args.budget,
        reference=args.reference,
        reference_pretrained=args.reference_pretrained,
        seed=args.seed,
        device=args.device,
        runs_root=args.runs_root,
        fail_on=args.fail_on,
        tokenizer=args.tokenizer,
    )
    report, run, table = run_scan(request, progress=sys.stderr.isatty())
    print(table)
    print(f"run folder: {run.path}")
    return exit_code(report, args.fail_on)
