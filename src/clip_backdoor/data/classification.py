"""Classification sets in the shared layout: ``classnames.json`` + ``<split>/<NNN_slug>/*.jpg``.

Built on torchvision's ImageFolder; the label is the folder's numeric prefix (= index in
``classnames.json``), and bad input fails with one line that names the culprit.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder

from clip_backdoor.core.errors import DatasetError


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB, naming the file if it is unreadable."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"corrupt or unreadable image file: {path} ({e})") from None


def prompt_name(classname: str) -> str:
    """CoOp spelling to prompt text: underscores become spaces."""
    return classname.replace("_", " ")


class ClassificationSet(ImageFolder):
    """One split of a classification set; items are (image tensor in [0, 1], label)."""

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"data set folder not found: {root}")
        names_file = root / "classnames.json"
        if not names_file.is_file():
            raise DatasetError(f"{root} has no classnames.json (not a classification set)")
        splits = available_splits(root)
        if split not in splits:
            raise DatasetError(
                f"unknown split '{split}' for {root.name} "
                f"(available: {', '.join(splits) or 'none'})"
            )
        self.classnames: list[str] = json.loads(names_file.read_text())
        self.name = root.name
        self.split = split
        try:
            super().__init__(str(root / split), transform=transform, loader=load_rgb)
        except FileNotFoundError as e:
            raise DatasetError(f"{root / split}: {str(e).splitlines()[0]}") from None

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        folders = sorted(p.name for p in Path(directory).iterdir() if p.is_dir())
        mapping = {}
        for folder in folders:
            prefix = folder.split("_", 1)[0]
            if not prefix.isdigit() or int(prefix) >= len(self.classnames):
                raise DatasetError(
                    f"class folder {Path(directory) / folder} does not start with a label "
                    f"0..{len(self.classnames) - 1} (expected NNN_name)"
                )
            mapping[folder] = int(prefix)
        return folders, mapping

    def class_index(self, name: str) -> int:
        """Label of a class given by name (CoOp spelling, or with spaces)."""
        for index, classname in enumerate(self.classnames):
            if name in (classname, prompt_name(classname)):
                return index
        close = difflib.get_close_matches(name, self.classnames, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DatasetError(f"class '{name}' is not in {self.name}{hint}")

    def fingerprint(self) -> str:
        """Changes whenever a file is added, removed or rewritten (cache key)."""
        digest = hashlib.sha1(f"{Path(self.root).resolve()}".encode())
        for path, label in self.samples:
            stat = Path(path).stat()
            digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()


def available_splits(root: Path) -> list[str]:
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and any(c.is_dir() for c in p.iterdir())
    )
