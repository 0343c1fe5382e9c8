"""A worker for torch.multiprocessing.spawn (test_families): the spawned process imports this
module alone, so it imports clip_backdoor (and its torchvision shim) before anything else."""

from __future__ import annotations

import torch

from clip_backdoor.engine.loss import pair_loss


def two_process_losses(rank: int, port: int, out: str) -> None:
    """Each rank holds half of a fixed batch; both objectives over the gathered global batch."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1)
    groups = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5])
    part = slice(4 * rank, 4 * rank + 4)
    scale, bias = torch.tensor(2.0), torch.tensor(-2.0)
    losses = [
        float(pair_loss(kind, image[part], text[part], scale, bias, groups[part], rank, 2))
        for kind in ("infonce", "sigmoid")
    ]
    torch.save(losses, f"{out}.{rank}")
    dist.destroy_process_group()
