"""A class-wise search whose cost does not grow with the number of classes.

Optimising a trigger for each of 100 classes costs 100 full searches. Instead every class gets
a short pre-screen (a few steps, same objective), the ``candidates`` classes it ranks easiest
to reach get the full search, and so do ``controls`` other classes drawn with the seed: their
full results are what "an ordinary class" looks like, so the outlier test (median absolute
deviation) compares values of equal quality. Cost: K·prescreen + (candidates + controls)·full.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pydantic import Field

from clip_backdoor.core.config import Strict

MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation (Neural Cleanse)


class ClasswiseSpec(Strict):
    prescreen_steps: int = Field(8, ge=1, description="steps per class in the pre-screen")
    candidates: int = Field(3, ge=1, description="easiest pre-screened classes searched fully")
    controls: int = Field(5, ge=2, description="other classes searched fully, as the baseline")


def anomaly_index(values: np.ndarray, low_is_outlier: bool) -> np.ndarray:
    """Per value, its distance from the median in units of 1.4826·MAD, signed so that larger
    means more anomalous in the suspicious direction."""
    median = float(np.median(values))
    mad = MAD_SCALE * float(np.median(np.abs(values - median)))
    mad = max(mad, 1e-6 * max(1.0, abs(median)))
    signed = (median - values) if low_is_outlier else (values - median)
    return signed / mad


def classwise_search(
    classes: list[int],
    prescreen: Callable[[int], float],
    refine: Callable[[int], float],
    spec: ClasswiseSpec,
    generator: torch.Generator,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """``prescreen(c)``: how easily class c is reached (higher: easier) after a few steps;
    ``refine(c)``: the full search's value. Returns both, the refined classes and who they are."""
    screened = {c: float(prescreen(c)) for c in classes}
    order = sorted(classes, key=lambda c: -screened[c])
    candidates = order[: spec.candidates]
    rest = order[spec.candidates :]
    pick = torch.randperm(len(rest), generator=generator)[: spec.controls].tolist()
    controls = [rest[i] for i in sorted(pick)]
    refined = {}
    for c in candidates + controls:
        if progress is not None:
            progress(f"class {c}")
        refined[c] = float(refine(c))
    return {
        "prescreen": screened,
        "candidates": candidates,
        "controls": controls,
        "refined": refined,
    }
