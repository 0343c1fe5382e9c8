"""TeCo (docs/methods.md 6.3): clean images lose their prediction at similar corruption severities
across corruption types; triggered ones are robust to some types and not to others. Score = the
population std over corruption types of the first severity (1-5, else 6) that flips the
prediction.

Corruptions: the 15 ImageNet-C types of ``imagecorruptions-imaug`` (a maintained fork of
``imagecorruptions``, whose last release no longer runs with current scikit-image). Each
(type, severity) is applied to the original image, not to the previous corruption's output (the
reference corrupts its list in place, so corruptions compound). Most corruptions draw from
NumPy's global generator, seeded per image by its position and the run's seed; impulse noise
and glass blur draw from a fresh unseeded generator unless given their ``seed`` argument, so
they get one derived from the image's (without it a re-run moved TeCo's AUROC, 0.5475 vs
0.5432 on one matrix cell). They run in worker processes (NumPy/OpenCV work; glass blur
dominates).
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from pydantic import Field, field_validator

from clip_backdoor.core.registry import DETECTORS
from clip_backdoor.detectors.base import Detector, DetectorSpec, ZeroShot

CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES = 5


class TecoSpec(DetectorSpec):
    corruptions: list[str] = Field(list(CORRUPTIONS), min_length=2)
    workers: int = Field(0, ge=0, description="processes for the corruptions (0: one per CPU)")

    @field_validator("corruptions")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(CORRUPTIONS))
        if unknown:
            raise ValueError(f"unknown corruptions {unknown} (known: {', '.join(CORRUPTIONS)})")
        return names


@functools.cache
def takes_seed(name: str) -> bool:
    """Whether the corruption draws from its own generator, seeded only through ``seed``."""
    from imagecorruptions import corruption_dict

    return "seed" in inspect.signature(corruption_dict[name]).parameters


def corrupted_versions(image: np.ndarray, names: list[str], seed: int) -> np.ndarray:
    """(len(names) * 5, H, W, 3) uint8: every (type, severity) of one HxWx3 uint8 image."""
    from imagecorruptions import corrupt

    np.random.seed(seed)
    out = []
    for t, name in enumerate(names):
        for severity in range(1, SEVERITIES + 1):
            own = {"seed": (seed * 131 + t * 8 + severity) % 2**32} if takes_seed(name) else {}
            version = corrupt(image, corruption_name=name, severity=severity, **own)
            out.append(np.asarray(version, dtype=np.uint8)[..., :3])
    return np.stack(out)


@DETECTORS.register("teco")
class Teco(Detector):
    name = "teco"
    spec_type = TecoSpec

    def fit(self, zero_shot: ZeroShot, clean: torch.Tensor, seed: int) -> None:
        super().fit(zero_shot, clean, seed)
        self.seed, self.offset = seed, 0
        workers = self.spec.workers or os.cpu_count() or 1
        spawn = multiprocessing.get_context("spawn")  # no fork of a process running OpenMP
        self.pool = ProcessPoolExecutor(workers, mp_context=spawn) if workers > 1 else None

    def score(self, images: torch.Tensor, kind: str) -> torch.Tensor:
        names = self.spec.corruptions
        pixels = (images.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).byte().numpy()
        seeds = [self.seed * 1_000_003 + self.offset + i for i in range(len(images))]
        self.offset += len(images)
        args = (list(pixels), [names] * len(images), seeds)
        mapper = self.pool.map if self.pool is not None else map
        versions = np.stack(list(mapper(corrupted_versions, *args)))  # (B, T*S, H, W, 3)
        batch = torch.from_numpy(versions).permute(0, 1, 4, 2, 3).float().div(255)
        base = self.zero_shot.predict(images)
        flat = self.zero_shot.predict(batch.flatten(0, 1))
        flipped = (flat.view(len(images), len(names), SEVERITIES) != base.view(-1, 1, 1)).numpy()
        first = np.where(flipped.any(axis=2), flipped.argmax(axis=2) + 1, SEVERITIES + 1)
        return torch.from_numpy(first.std(axis=1))  # population std (ddof 0)

    def report(self, ctx, label: str) -> dict:
        if self.pool is not None:
            self.pool.shutdown()
        return {"corruptions": list(self.spec.corruptions)}
