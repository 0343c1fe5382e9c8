"""Metric definitions shared by every table (docs/methods.md 7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

ASR_NOTE = (
    "ASR: triggered test images whose true class is not the target, predicted as the target; "
    "asr_all: the same over all test images."
)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1,)) -> dict:
    """{k: fraction of rows whose label is among the k highest logits}."""
    num_classes = logits.shape[1]
    top = logits.topk(min(max(ks), num_classes), dim=1).indices
    hits = top == labels.view(-1, 1)
    n = max(len(labels), 1)
    return {k: int(hits[:, : min(k, num_classes)].any(dim=1).sum()) / n for k in ks}


def attack_success_rate(predictions: torch.Tensor, labels: torch.Tensor, target: int) -> dict:
    """ASR over triggered images whose true class is not the target; asr_all over all images."""
    predictions, labels = predictions.view(-1), labels.view(-1)
    hit = predictions == target
    non_target = labels != target
    n = int(non_target.sum())
    return {
        "asr": int(hit[non_target].sum()) / n if n else float("nan"),
        "asr_all": int(hit.sum()) / len(hit) if len(hit) else float("nan"),
        "asr_n": n,
    }


def harmonic_mean(a: float, b: float) -> float:
    """H = 2ab/(a+b) of seen and unseen scores (0 when both are 0)."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)
