"""``clip-backdoor scan-data``: which pairs of a training mix look poisoned?"""

from __future__ import annotations

import argparse
import sys

from clip_backdoor.commands.common import MODEL_HELP, add_model_options, add_run_options


def add(commands) -> None:
    sd = commands.add_parser(
        "scan-data",
        help="which image-caption pairs of a training mix look poisoned? (a triage list)",
        description="Score every pair of a training mix from a CLIP's image and caption "
        "embeddings, higher = more suspect: k_distance, lid, slof, dao (Huang et al., ICLR "
        "2025: poisoned pairs are sparse in their local neighbourhood), isolation_forest and "
        "safeclip (image-caption cosine, two-component mixture). Scan with the model trained "
        "on the data (Huang et al.'s setting) or with a clean one. Writes "
        "data_scan/triage_model.csv (every pair, most suspect first, with image file, caption "
        "and each score), tables/data_scan.md and figures/data_scan_hist_model.png; where the "
        "mix is an attack artifact, its poison.json then scores the ranking (AUROC, TPR at 1% "
        "and 5% FPR, precision at the true count) and figures/data_scan_roc_model.png.",
    )
    sd.add_argument(
        "--model", required=True, help="the CLIP whose embeddings are used: " + MODEL_HELP
    )
    sd.add_argument(
        "--data",
        required=True,
        metavar="MIX",
        help="a data-poisoning artifact folder (its training mix), or comma-separated data "
        "set names (their train pairs)",
    )
    add_model_options(sd)
    sd.add_argument("--detectors", default="all", help="comma-separated detectors (default: all)")
    sd.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="DETECTOR.KEY=VALUE",
        help="a detector setting, e.g. dao.k=32 or dao.space=pair (repeatable)",
    )
    sd.add_argument("--batch-size", type=int, default=256, help="pairs per encoding batch")
    add_run_options(sd)
    sd.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from clip_backdoor.pipeline.scan import parse_params
    from clip_backdoor.pipeline.scan_data import DataScanRequest, run_data_scan

    request = DataScanRequest(
        model=args.model,
        data=args.data,
        pretrained=args.pretrained,
        arch=args.arch,
        detectors=args.detectors.split(",") if args.detectors != "all" else "all",
        params=parse_params(args.param, "DETECTOR", "dao.k=32"),
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        runs_root=args.runs_root,
        tokenizer=args.tokenizer,
    )
    _, run, table = run_data_scan(request, progress=sys.stderr.isatty())
    print(table)
    print(f"triage list: {run.path / 'data_scan' / 'triage_model.csv'}")
    print(f"run folder: {run.path}")
    return 0
