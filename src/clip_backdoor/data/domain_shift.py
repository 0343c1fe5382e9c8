"""Shifted copies of a test set: the stand-in for Bai et al.'s cross-domain protocol.

The papers test on ImageNet-V2/-Sketch/-A/-R, which are not here; a grayscale, a blurred and an
edge-sketch copy of a shared test set change the image domain while keeping its classes, and
reports name them ``<set>~<shift>`` so they are never mistaken for the real benchmarks.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage import color, filters
from torch.utils.data import Dataset

from clip_backdoor.core.errors import DatasetError
from clip_backdoor.data.fewshot import NamedClasses

BLUR_SIGMA = 1.0  # pixels at the model's resolution: softens 64-px images without erasing them


def _grayscale(image: np.ndarray) -> np.ndarray:
    return np.repeat(color.rgb2gray(image)[..., None], 3, axis=-1)


def _blur(image: np.ndarray) -> np.ndarray:
    return filters.gaussian(image, sigma=BLUR_SIGMA, channel_axis=-1)


def _sketch(image: np.ndarray) -> np.ndarray:
    """Dark strokes on white where the gray image has edges (an ImageNet-Sketch look)."""
    edges = filters.sobel(color.rgb2gray(image))
    edges = edges / max(float(edges.max()), 1e-8)
    return np.repeat((1.0 - edges)[..., None], 3, axis=-1)


SHIFTS = {"grayscale": _grayscale, "blur": _blur, "sketch": _sketch}


class DomainShift(NamedClasses, Dataset):
    """A classification set whose [0, 1] image tensors pass through one of ``SHIFTS``."""

    def __init__(self, dataset, shift: str) -> None:
        if shift not in SHIFTS:
            raise DatasetError(f"unknown shift '{shift}' (choose from {', '.join(SHIFTS)})")
        self.dataset, self.shift = dataset, shift
        self.classnames, self.targets = dataset.classnames, dataset.targets
        self.name, self.split = f"{dataset.name}~{shift}", dataset.split
        self.transform = getattr(dataset, "transform", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        pixels = image.permute(1, 2, 0).double().numpy()
        shifted = SHIFTS[self.shift](pixels).clip(0.0, 1.0)
        return torch.from_numpy(shifted).permute(2, 0, 1).to(image.dtype).contiguous(), label

    def fingerprint(self) -> str:
        return f"{self.dataset.fingerprint()}|shift={self.shift}"


def domain_shift(dataset, shift: str | None) -> Dataset:
    """``dataset`` unchanged for no shift, else its shifted copy."""
    return dataset if shift in (None, "none") else DomainShift(dataset, shift)
