"""The matrix's ROC curves: one figure per (model, attack, seed) with every detector on it.

Each detection cell of a matrix draws its own one-curve ``roc.png``; a reader compares the
detectors against one attack, so the report draws the cells of one attack and seed on shared
axes instead, from the scores each cell kept (``artifacts/detection/<detector>.csv``). The
detectors of one attack and seed scored the same seeded images, so the curves are comparable.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

from clip_backdoor.evaluation.detection import roc_figure
from clip_backdoor.reports.common import config_model


def detection_cell(run) -> dict | None:
    """The run's ``matrix_cell`` if it is a matrix detection cell, else None."""
    cell = run.config.get("matrix_cell")
    return cell if cell and cell["kind"] == "detection" else None


def read_scores(path: Path) -> dict[str, list[float]]:
    """Clean and triggered scores of a detector's score table (blank entries skipped)."""
    clean, triggered = [], []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["score_clean"] != "":
                clean.append(float(row["score_clean"]))
            if row["score_triggered"] != "":
                triggered.append(float(row["score_triggered"]))
    return {"clean": clean, "triggered": triggered}


def matrix_roc_figures(runs: list, encode) -> list[dict]:
    """``[{"title", "uri", "sources": [(detector, Source)]}]``, one per (model, attack, seed),
    sorted; ``encode`` turns a PNG path into what the page embeds."""
    groups: dict[tuple, dict[str, tuple]] = {}  # key -> {detector: (run, its score table)}
    for run in runs:
        cell = detection_cell(run)
        if not cell:
            continue
        scores = run.folder / "artifacts" / "detection" / f"{cell['column']}.csv"
        if scores.is_file():
            key = (config_model(run.config), cell["attack"], run.config.get("seed"))
            groups.setdefault(key, {})[cell["column"]] = (run, scores)
    figures = []
    with tempfile.TemporaryDirectory() as scratch:
        for n, key in enumerate(sorted(groups, key=str)):
            model, attack, seed = key
            cells = dict(sorted(groups[key].items()))
            detections = {detector: read_scores(scores) for detector, (_, scores) in cells.items()}
            path = roc_figure(detections, Path(scratch) / f"roc_{n}.png")
            figures.append(
                {
                    "title": f"{model} · {attack}, seed {seed}",
                    "uri": encode(path),
                    "sources": [(detector, run.source) for detector, (run, _) in cells.items()],
                }
            )
    return figures
