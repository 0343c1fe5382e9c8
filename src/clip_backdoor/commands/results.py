"""``clip-backdoor results TABLE RUNS...``: run folders summarised into results/."""

from __future__ import annotations

import argparse


def add(commands) -> None:
    from clip_backdoor.reports.summary import TABLES  # light: the table modules load on use

    res = commands.add_parser(
        "results", help="summarise run folders into results/<table>.md and .csv"
    )
    res.add_argument(
        "table",
        choices=TABLES,
        help="which summary table to write (ablation: one file set per ablation recipe; "
        "decomposition: decomposition.md, detection.csv and repair.csv; measuring: "
        "measuring.md/.csv, attribute_probe.csv and text_head.csv, what a measuring model "
        "shows; scan: scan.md/.csv and scan_roc.png from runs with scan stages; data_scan: "
        "data_scan.md/.csv "
        "and cleaning.csv from runs with data_scan stages and cleaning defenses; matrix: "
        "matrix.md/.csv from a matrix's cell folders)",
    )
    res.add_argument(
        "runs",
        nargs="*",
        help="run folders to add (globs expanded by the shell); runs recorded earlier in "
        "OUT/<table>_runs.json are kept, so their folders need not exist any more",
    )
    res.add_argument("--out", default="results", help="folder of the summary (default: results)")
    res.add_argument("--fresh", action="store_true", help="forget the runs recorded earlier in OUT")
    res.add_argument(
        "--check",
        action="store_true",
        help="write nothing: compare each run's numbers with those recorded in OUT for the same "
        "recipe name and seed (exit 1 when one differs or none is recorded)",
    )
    res.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.check:
        from clip_backdoor.reports.reproduce import check_runs

        report, reproduced = check_runs(args.table, args.runs, args.out)
        print(report)
        return 0 if reproduced else 1
    from clip_backdoor.reports.summary import write_summary

    print(write_summary(args.table, args.runs, args.out, fresh=args.fresh))
    return 0
