"""What a scan leaves in its run folder: ``scan.json``, a table and the inverted triggers."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
from safetensors.torch import save_file

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clip_backdoor.core.runs import RunDir, json_safe, write_table  # noqa: E402
from clip_backdoor.scanning.scan import ScanReport  # noqa: E402

SCAN_FILE = "scan.json"
INVERTED_FILE = "inverted.safetensors"  # every scanner's pictures, "<scanner>.<name>" (3, H, W)
TABLE_HEADERS = ["scanner", "score", "threshold", "suspicious", "verdict", "target", "seconds"]


def table_rows(report: ScanReport) -> list[list]:
    rows = [
        [
            f.scanner,
            round(f.score, 4),
            round(f.threshold, 4),
            "below" if f.suspect_below else "above",
            f.verdict,
            f.target or "-",
            round(f.seconds, 1),
        ]
        for f in report.findings
    ]
    seconds = round(sum(f.seconds for f in report.findings), 1)
    rows.append(
        [
            "combined",
            round(report.score, 4),
            0.0,
            "above",
            report.verdict,
            report.target or "-",
            seconds,
        ]
    )
    return rows


def trigger_figure(report: ScanReport, path: Path) -> Path | None:
    """One row per scanner that inverted something: its pictures side by side."""
    rows = [f for f in report.findings if f.images]
    if not rows:
        return None
    columns = max(len(f.images) for f in rows)
    fig = plt.figure(figsize=(2.0 * columns, 2.5 * len(rows)), layout="constrained")
    for sub, finding in zip(fig.subfigures(len(rows), 1, squeeze=False)[:, 0], rows, strict=True):
        sub.suptitle(
            f"{finding.scanner}: {finding.verdict} (score {finding.score:.3g}, threshold "
            f"{finding.threshold:.3g}), target {finding.target or '-'}",
            fontsize=9,
        )
        axes = sub.subplots(1, columns, squeeze=False)[0]
        for axis in axes:
            axis.axis("off")
        for axis, (name, image) in zip(axes, finding.images.items(), strict=False):
            axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            axis.set_title(name, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: ScanReport, run: RunDir, folder: Path, context: dict) -> str:
    """scan.json, tables/scan.md and .csv and figures/scan_triggers.png under ``folder``
    (the run folder itself for ``clip-backdoor scan``; a sub-folder per scan stage)."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = {**context, **report.summary()}
    (folder / SCAN_FILE).write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    figure = trigger_figure(report, folder / "figures" / "scan_triggers.png")
    pictures = {
        f"{f.scanner}.{name}": image.contiguous()
        for f in report.findings
        for name, image in f.images.items()
    }
    if pictures:
        save_file(pictures, str(folder / INVERTED_FILE))
    note = (
        f"Verdict: **{report.verdict}**"
        + (f", suspected target '{report.target}'" if report.target else "")
        + ". Each scanner's score is held against its threshold ('suspicious' says on which side"
        " a backdoor lies); the combined score is the largest margin past a threshold, in units"
        " of that threshold, held against 0"
        + (
            f"; thresholds are relative to the reference {report.reference}"
            if report.reference
            else "; thresholds are the scanners' documented defaults"
        )
        + "."
    )
    if figure is not None:
        run.log(f"inverted triggers: {figure}")
    return write_table(folder / "tables", "scan", TABLE_HEADERS, table_rows(report), note)
