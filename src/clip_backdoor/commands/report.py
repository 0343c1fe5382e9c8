"""``clip-backdoor report RUNS...``: one self-contained HTML page."""

from __future__ import annotations

import argparse


def add(commands) -> None:
    rep = commands.add_parser(
        "report",
        help="one self-contained HTML page from run folders (grid, papers' tables, figures)",
        description="Build report/index.html from run folders: the attack x defense grid as a "
        "heat map of ASR with CA beside it, one section per paper with its table, the "
        "detectors' ROC curves and every trigger rendered. Inline CSS, figures embedded: no "
        "server, no network. Every number links to its run folder and names its recipe, "
        "commit, seed and machine.",
    )
    rep.add_argument("runs", nargs="+", help="run folders (e.g. runs/matrix_mini/*)")
    rep.add_argument("-o", "--out", default="report", help="output folder (default: report)")
    rep.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from clip_backdoor.reports.html import write_report

    page = write_report(args.runs, args.out)
    print(f"report: {page} (open it in a browser; self-contained)")
    return 0
