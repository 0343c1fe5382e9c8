"""Scores of an input-level backdoor detector against clean/triggered labels (docs/methods.md 7).

Every detector (Decomp-Det, STRIP, SCALE-UP, TeCo) outputs one score per input, higher meaning
"more likely triggered"; they are compared on the same inputs by AUROC, the TPR at a fixed false
positive rate on clean inputs, and the threshold that reaches a target false-positive rate.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from clip_backdoor.core.errors import ConfigError

matplotlib.use("Agg")


def _check(clean: np.ndarray, triggered: np.ndarray) -> None:
    if clean.size == 0 or triggered.size == 0:
        raise ConfigError("detection metrics need both clean and triggered scores")


def detection_metrics(clean, triggered, fpr: float = 0.05) -> dict[str, float]:
    """AUROC (triggered positive), TPR at ``fpr`` on clean inputs, and that threshold."""
    clean, triggered = np.asarray(clean, float), np.asarray(triggered, float)
    _check(clean, triggered)
    labels = np.r_[np.zeros(clean.size), np.ones(triggered.size)]
    scores = np.r_[clean, triggered]
    threshold = threshold_at_fpr(clean, fpr)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "tpr_at_fpr": float((triggered > threshold).mean()),
        "fpr": float((clean > threshold).mean()),
        "threshold": float(threshold),
        "target_fpr": fpr,
        "n_clean": int(clean.size),
        "n_triggered": int(triggered.size),
    }


def threshold_at_fpr(clean, fpr: float) -> float:
    """The smallest threshold t with at most ``fpr`` of clean scores above it (flag: score > t).

    Ties in discrete scores (e.g. counts of infected heads) can leave the reached rate below
    the target; it never exceeds it.
    """
    if not 0 <= fpr < 1:
        raise ConfigError(f"the false-positive rate must be in [0, 1), got {fpr}")
    clean = np.sort(np.asarray(clean, float))
    if clean.size == 0:
        raise ConfigError("a threshold needs clean scores")
    allowed = int(np.floor(fpr * clean.size))  # clean inputs that may lie above the threshold
    return float(clean[clean.size - 1 - allowed])


def roc_points(clean, triggered) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the ROC curve, for figures."""
    clean, triggered = np.asarray(clean, float), np.asarray(triggered, float)
    _check(clean, triggered)
    labels = np.r_[np.zeros(clean.size), np.ones(triggered.size)]
    fpr, tpr, _ = roc_curve(labels, np.r_[clean, triggered])
    return fpr, tpr


def roc_figure(detections: dict[str, dict], path: Path) -> Path:
    """One ROC curve per detector (``{label: {"clean": scores, "triggered": scores}}``) on shared
    axes, AUROC in the legend: the detectors were scored on the same inputs."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for label, scores in detections.items():
        fpr, tpr = roc_points(scores["clean"], scores["triggered"])
        auroc = detection_metrics(scores["clean"], scores["triggered"])["auroc"]
        ax.plot(fpr, tpr, label=f"{label} ({auroc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate (clean)", ylabel="true-positive rate (triggered)")
    ax.legend(title="detector (AUROC)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
