"""A labelled set held in memory as one image tensor (benchmarks, triggered copies, tests)."""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Dataset


class TensorSet(Dataset):
    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, classnames: list[str], name="tensors"
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.targets = self.labels.tolist()
        self.classnames, self.name, self.split = classnames, name, "memory"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])

    def fingerprint(self) -> str:
        digest = hashlib.sha1(self.images.contiguous().numpy().tobytes())
        digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()
