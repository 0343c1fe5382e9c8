"""Seeded, resumable batch order shared by every process.

Each epoch is a permutation drawn from (seed, epoch). A global batch is split between processes
in contiguous shards, so N processes see exactly the images one process would see in the same
global batch, and a run can restart at any step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class ShardedBatches(Sampler[list[int]]):
    """This process's share of the global batches of one epoch, from ``start_batch`` on."""

    def __init__(
        self,
        n: int,
        global_batch: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} not divisible by {world_size} processes")
        self.n, self.global_batch, self.seed, self.epoch = n, global_batch, seed, epoch
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch  # drop the last partial batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_permutation(self.n, self.seed, self.epoch)
        shard = self.global_batch // self.world_size
        for b in range(self.start_batch, self.batches_per_epoch()):
            batch = order[b * self.global_batch : (b + 1) * self.global_batch]
            yield batch[self.rank * shard : (self.rank + 1) * shard].tolist()
