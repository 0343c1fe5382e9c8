"""Run an attack once per key: later runs with the same model, data, config and seed adopt it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from clip_backdoor.artifacts import is_artifact, save_backdoor
from clip_backdoor.core.config import cache_root
from clip_backdoor.stages import StageOutput


def attack_folder(key: str) -> tuple[Path, Path]:
    """(the artifact folder, the folder for its training checkpoints until it exists)."""
    root = cache_root() / "artifacts"
    return root / key, root / f"{key}.partial"


def cached_attack(ctx, key: str, use_cache: bool, build: Callable[[Path], tuple]) -> StageOutput:
    """``build(partial) -> (model, trigger, target, info, poison)`` runs only on a cache miss."""
    folder, partial = attack_folder(key)
    if use_cache and is_artifact(folder):
        ctx.log(f"reusing the cached attack artifact {folder}")
        return ctx.adopt_artifact(folder, reused=True)
    model, trigger, target, info, poison = build(partial)
    save_backdoor(folder, model, trigger, target, {**info, "cache_key": key}, poison)
    shutil.rmtree(partial, ignore_errors=True)
    return ctx.adopt_artifact(folder, reused=False)
