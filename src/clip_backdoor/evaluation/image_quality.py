"""PSNR and SSIM of triggered vs clean images (docs/methods.md 7), SSIM from scikit-image."""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity

from clip_backdoor.evaluation.features import iterate_batches
from clip_backdoor.triggers.base import Trigger, seeded_generator


def psnr(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """10 log10(1 / MSE) of one image pair in [0, 1]; inf when identical."""
    mse = float(((clean.double() - triggered.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def ssim(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, data range 1, channel mean."""
    a = clean.permute(1, 2, 0).double().numpy()
    b = triggered.permute(1, 2, 0).double().numpy()
    return float(
        structural_similarity(
            a,
            b,
            data_range=1.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def image_quality(trigger: Trigger, dataset, limit: int = 256, seed: int = 0) -> dict:
    """Mean PSNR (identical pairs skipped) and SSIM over the first ``limit`` images."""
    generator = seeded_generator(seed)
    psnrs, ssims, seen = [], [], 0
    for images, _ in iterate_batches(dataset, 64):
        images = images[: limit - seen]
        triggered = trigger.apply(images, generator)
        for a, b in zip(images, triggered, strict=True):
            value = psnr(a, b)
            if math.isfinite(value):
                psnrs.append(value)
            ssims.append(ssim(a, b))
        seen += len(images)
        if seen >= limit:
            break
    return {
        "psnr": float(np.mean(psnrs)) if psnrs else math.inf,
        "ssim": float(np.mean(ssims)) if ssims else float("nan"),
        "quality_n": seen,
    }
