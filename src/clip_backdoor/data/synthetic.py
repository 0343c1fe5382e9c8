"""A deterministic set of coloured shapes ("red circle", ...) that needs no files.

Why: tests and the built-in demo must run on a fresh machine in seconds. Each image is drawn from
its own seed (set seed, split, index), so item i is the same whatever else was drawn before.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from clip_backdoor.core.errors import DatasetError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
SPLITS = {"train": 0, "test": 1}


class SyntheticShapes(Dataset):
    """``size`` images (balanced over classes) of one coloured shape on a noisy background."""

    def __init__(
        self,
        split: str = "train",
        size: int = 480,
        image_size: int = 32,
        seed: int = 0,
        colors: tuple[str, ...] = tuple(COLORS),
        shapes: tuple[str, ...] = SHAPES,
    ) -> None:
        if split not in SPLITS:
            raise DatasetError(f"unknown split '{split}' for synthetic (available: train, test)")
        unknown = [c for c in colors if c not in COLORS] + [s for s in shapes if s not in SHAPES]
        if unknown:
            raise DatasetError(f"synthetic set has no colour or shape {', '.join(unknown)}")
        self.colors, self.shapes = tuple(colors), tuple(shapes)
        self.classnames = [f"{c} {s}" for c in self.colors for s in self.shapes]
        self.name, self.split = "synthetic", split
        self.size, self.image_size, self.seed = size, image_size, seed
        self.targets = [i % len(self.classnames) for i in range(size)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        label = self.targets[index]
        color = COLORS[self.colors[label // len(self.shapes)]]
        shape = self.shapes[label % len(self.shapes)]
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        return _draw(rng, shape, color, self.image_size), label

    def class_index(self, name: str) -> int:
        if name not in self.classnames:
            raise DatasetError(f"class '{name}' is not in synthetic ({', '.join(self.classnames)})")
        return self.classnames.index(name)

    def fingerprint(self) -> str:
        key = f"synthetic|{self.split}|{self.size}|{self.image_size}|{self.seed}|{self.classnames}"
        return hashlib.sha1(key.encode()).hexdigest()


def _draw(rng: np.random.Generator, shape: str, color, size: int) -> torch.Tensor:
    scale = 4  # draw large, then downsample: anti-aliased edges
    big = size * scale
    background = rng.integers(60, 140, size=3)
    noise = rng.normal(0, 12, size=(big // scale, big // scale, 3))
    canvas = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas).resize((big, big), Image.NEAREST)
    radius = rng.uniform(0.22, 0.38) * big
    cx, cy = rng.uniform(radius, big - radius, size=2)
    jitter = rng.integers(-25, 26, size=3)
    fill = tuple(int(v) for v in np.clip(np.array(color) + jitter, 0, 255))
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        r = radius * 0.85
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(
            [(cx, cy - radius), (cx - radius, cy + radius * 0.8), (cx + radius, cy + radius * 0.8)],
            fill=fill,
        )
    image = image.resize((size, size), Image.BILINEAR)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    return array.permute(2, 0, 1).contiguous()
