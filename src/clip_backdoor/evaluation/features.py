"""Batched image-feature extraction with an on-disk cache for frozen encoders.

Why: every defense and detector re-evaluates the same frozen model on the same images; encoding
is the whole cost. Features are cached under a key made of the model's weights, the data set's
files, the transform, the trigger and the precision, so any change to one re-encodes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.config import cache_root
from clip_backdoor.data.tensors import TensorSet
from clip_backdoor.models.pixel_clip import PixelCLIP
from clip_backdoor.triggers.base import Trigger


def default_cache_dir() -> Path:
    return cache_root() / "features"


def model_fingerprint(model: PixelCLIP) -> str:
    """Hash of the weights, memoised until a tensor is replaced or modified in place."""
    state = model.fingerprint_state()
    versions = tuple((v.data_ptr(), v._version) for v in state.values())  # replaced or modified
    memo = getattr(model, "_fingerprint_memo", None)
    if memo is not None and memo[0] == versions:
        return memo[1]
    digest = _hash_weights(model, state)
    model._fingerprint_memo = (versions, digest)
    return digest


def _hash_weights(model: PixelCLIP, state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=20)
    digest.update(repr(sorted(model.preprocess_cfg.items())).encode())
    for key, value in state.items():
        digest.update(key.encode())
        digest.update(
            value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


class FeatureCache:
    """Feature tensors stored as safetensors files, written atomically; counts hits and misses."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return load_file(str(path))

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        os.close(handle)
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
            os.replace(tmp, self._path(key))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def cache_key(
    model: PixelCLIP, dataset, trigger: Trigger | None, precision: str, normalize: bool = True
) -> str:
    transform = getattr(dataset, "transform", None)
    parts = [
        model_fingerprint(model),
        dataset.fingerprint(),
        repr(transform),
        trigger.fingerprint() if trigger is not None else "clean",
        precision,
    ]
    if not normalize:
        parts.append("unnormalised")  # normalised features keep their earlier keys
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def iterate_batches(
    dataset, batch_size: int, num_workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches; in-memory sets are sliced without per-item collation."""
    if isinstance(dataset, TensorSet):
        for start in range(0, len(dataset), batch_size):
            yield (
                dataset.images[start : start + batch_size],
                dataset.labels[start : start + batch_size],
            )
        return
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for images, labels in loader:
        yield images, torch.as_tensor(labels)


@torch.inference_mode()
def encode_images(
    model: PixelCLIP,
    dataset,
    trigger: Trigger | None = None,
    batch_size: int = 256,
    precision: str = "auto",
    num_workers: int = 0,
    progress: bool = False,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image features (N, D) in fp32, normalised unless asked not to, and labels (N,); memory
    grows with N*D only."""
    device = next(model.parameters()).device
    features, labels = [], []
    batches = iterate_batches(dataset, batch_size, num_workers)
    total = -(-len(dataset) // batch_size)
    for images, batch_labels in tqdm(batches, total=total, disable=not progress, desc="encode"):
        images = images.to(device)
        if trigger is not None:
            images = trigger.apply(images)
        with precision_mod.autocast(precision, device):
            features.append(model.encode_image(images, normalize=normalize).float().cpu())
        labels.append(batch_labels)
    return torch.cat(features), torch.cat(labels)


def cached_features(
    model: PixelCLIP,
    dataset,
    trigger: Trigger | None = None,
    cache: FeatureCache | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encode_images`` through ``cache`` (None: no caching); identity triggers count as clean."""
    if trigger is not None and trigger.is_identity:
        trigger = None
    if cache is None:
        return encode_images(model, dataset, trigger, **kwargs)
    device = next(model.parameters()).device
    precision = precision_mod.resolve(kwargs.get("precision", "auto"), device)
    key = cache_key(model, dataset, trigger, precision, kwargs.get("normalize", True))
    hit = cache.get(key)
    if hit is not None:
        return hit["features"], hit["labels"]
    features, labels = encode_images(model, dataset, trigger, **kwargs)
    cache.put(key, {"features": features, "labels": labels})
    return features, labels
