"""Image-caption sets from CSV files with an ``image,caption`` header (paths relative to it)."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from clip_backdoor.core.errors import DatasetError
from clip_backdoor.data.classification import load_rgb


class CaptionSet(Dataset):
    """One row per (image, caption) pair; items are (image tensor in [0, 1], caption)."""

    def __init__(self, csv_path: str | Path, transform: Callable | None = None) -> None:
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise DatasetError(f"caption file not found: {csv_path}")
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"image", "caption"} <= set(reader.fieldnames):
                raise DatasetError(f"{csv_path} must have the header 'image,caption'")
            rows = [(row["image"], row["caption"]) for row in reader]
        if not rows:
            raise DatasetError(f"{csv_path} has no rows")
        base = csv_path.parent
        self.samples = [(str(base / image), caption) for image, caption in rows]
        missing = [p for p, _ in self.samples if not Path(p).is_file()]
        if missing:
            raise DatasetError(f"{csv_path}: {len(missing)} image files missing, e.g. {missing[0]}")
        self.captions = [caption for _, caption in self.samples]
        self.name = base.name
        self.split = csv_path.stem
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, caption = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform else image), caption

    def fingerprint(self) -> str:
        digest = hashlib.sha1()
        for path, caption in self.samples:
            digest.update(f"{path}|{caption}|{Path(path).stat().st_mtime_ns}".encode())
        return digest.hexdigest()
