"""Atomic training checkpoints: a crash at any moment leaves the previous one intact."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from clip_backdoor.core.errors import UserError

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over the old one."""
    directory.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / CHECKPOINT)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return directory / CHECKPOINT


def load_checkpoint(directory: Path) -> dict:
    path = Path(directory) / CHECKPOINT
    if not path.is_file():
        raise UserError(f"no checkpoint to resume from: {path} is missing")
    # weights_only: a checkpoint holds tensors, numbers and strings, never code.
    return torch.load(path, map_location="cpu", weights_only=True)
