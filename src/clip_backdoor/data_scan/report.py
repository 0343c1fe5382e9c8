"""What a data scan leaves: the triage list, the score histograms, and (truth known) the ROC.

Per embedding model (the attacked one, Huang et al.'s setting, and/or a clean one):
``triage_<model>.csv`` (every pair, most suspect first by the first detector, with its image
file, caption and every detector's score), ``figures/data_scan_hist_<model>.png`` and, where the
mix's truth is known, ``figures/data_scan_roc_<model>.png`` and the ranking metrics (AUROC, TPR
at low FPR, precision).
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clip_backdoor.core.errors import ConfigError  # noqa: E402
from clip_backdoor.data_scan.mix import TrainingMix  # noqa: E402
from clip_backdoor.evaluation.detection import detection_metrics, roc_figure  # noqa: E402

TRIAGE_COLUMNS = ["rank", "index", "image", "caption"]


def pair_metrics(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """AUROC, TPR at 1% and 5% FPR on the clean pairs, and precision at the true poison count."""
    clean, poisoned = scores[~truth], scores[truth]
    at1, at5 = detection_metrics(clean, poisoned, 0.01), detection_metrics(clean, poisoned, 0.05)
    k = int(truth.sum())
    top = np.argsort(-scores, kind="stable")[:k]
    return {
        "auroc": at1["auroc"],
        "tpr_at_1fpr": at1["tpr_at_fpr"],
        "tpr_at_5fpr": at5["tpr_at_fpr"],
        "precision_at_k": float(truth[top].mean()),
        "pairs": int(truth.size),
        "poisoned": k,
    }


def write_triage(path: Path, mix: TrainingMix, scores: dict[str, np.ndarray]) -> Path:
    """Every pair, most suspect first by the first detector; ties keep the mix's order."""
    first = next(iter(scores.values()))
    order = np.argsort(-first, kind="stable")
    captions = mix.captions()
    columns = TRIAGE_COLUMNS + list(scores) + (["poisoned"] if mix.truth is not None else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for rank, index in enumerate(order, start=1):
            row = [rank, int(index), mix.image_ref(int(index)), captions[index]]
            row += [f"{float(s[index]):.6g}" for s in scores.values()]
            if mix.truth is not None:
                row.append(int(mix.truth[index]))
            writer.writerow(row)
    tmp.replace(path)
    return path


def read_triage(path: Path) -> list[dict]:
    """The triage CSV back as rows (scores as floats, indices as ints)."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ConfigError(f"{path} holds no pairs")
    keep = {"image", "caption"}
    return [
        {
            k: v if k in keep else (int(v) if k in ("rank", "index", "poisoned") else float(v))
            for k, v in row.items()
        }
        for row in rows
    ]


def histogram_figure(scores: dict[str, np.ndarray], truth: np.ndarray | None, path: Path) -> Path:
    """One panel per detector: the score distribution, poisoned pairs apart where known."""
    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores), 2.8), squeeze=False)
    for axis, (name, values) in zip(axes[0], scores.items(), strict=True):
        bins = np.histogram_bin_edges(values, bins=50)
        if truth is None:
            axis.hist(values, bins=bins, color="tab:blue")
        else:
            axis.hist(values[~truth], bins=bins, color="tab:blue", alpha=0.7, label="clean")
            axis.hist(values[truth], bins=bins, color="tab:red", alpha=0.8, label="poisoned")
            axis.legend(fontsize=7)
        axis.set_yscale("log")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("score (higher = more suspect)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(run_path: Path, model: str, scores: dict, truth: np.ndarray | None) -> list:
    figures = [
        histogram_figure(scores, truth, run_path / "figures" / f"data_scan_hist_{model}.png")
    ]
    if truth is not None and 0 < truth.sum() < truth.size:
        detections = {n: {"clean": s[~truth], "triggered": s[truth]} for n, s in scores.items()}
        figures.append(roc_figure(detections, run_path / "figures" / f"data_scan_roc_{model}.png"))
    return figures
