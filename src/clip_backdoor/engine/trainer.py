"""Contrastive training and fine-tuning of CLIP on image-caption pairs.

AdamW with linear warm-up and cosine decay, gradient accumulation, bf16 autocast where native,
optional frozen towers, checkpoints every N steps with exact resume, and DDP under torchrun
with the loss over all processes' features.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.engine.checkpoint import load_checkpoint, save_checkpoint
from clip_backdoor.engine.config import TrainingSpec
from clip_backdoor.engine.distributed import Dist
from clip_backdoor.engine.loss import MAX_LOGIT_SCALE, pair_loss, resolve_objective
from clip_backdoor.engine.pairs import ImageTextPairs
from clip_backdoor.engine.sampler import ShardedBatches
from clip_backdoor.models import PixelCLIP

Objective = Callable[
    [torch.nn.Module, PixelCLIP, tuple[torch.Tensor, ...], TrainingSpec, Dist], torch.Tensor
]


def clip_objective(
    net: torch.nn.Module,
    model: PixelCLIP,
    batch: tuple[torch.Tensor, ...],
    spec: TrainingSpec,
    dist: Dist,
) -> torch.Tensor:
    """The model's own objective (``spec.loss``) over the global batch of pairs: InfoNCE or
    SigLIP's sigmoid loss, label-aware targets if asked."""
    images, tokens, groups = batch[:3]
    image_features, text_features, _ = net(images, tokens)
    bias = model.logit_bias
    return pair_loss(
        resolve_objective(model, spec.loss),
        image_features.float(),
        text_features.float(),
        model.logit_scale.float(),
        None if bias is None else bias.float(),
        groups if spec.label_aware else None,
        dist.rank,
        dist.world_size,
    )


@dataclass
class TrainResult:
    steps: int
    samples_per_s: float
    history: list[list[float]] = field(default_factory=list)  # [step, loss, lr]


def freeze_towers(model: PixelCLIP, towers: list[str]) -> None:
    """'image' freezes the image tower, 'text' the text tower (the temperature and bias stay)."""
    for name, param in model.clip.named_parameters():
        if model.tower_of(name) in towers:
            param.requires_grad_(False)


def parameter_groups(model: PixelCLIP, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases and the temperature (as open_clip does)."""
    decay, no_decay = [], []
    for name, param in model.clip.named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or "ln" in name or "bias" in name or "logit_" in name
        (no_decay if exclude else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def total_steps(spec: TrainingSpec, n: int) -> int:
    if spec.steps is not None:
        return spec.steps
    return max(1, math.ceil(spec.epochs * (n // spec.batch_size)))


def _batches(
    data: ImageTextPairs, spec: TrainingSpec, seed: int, dist: Dist, epoch: int, start: int
) -> Iterator[tuple[int, int, tuple]]:
    """(epoch, batch index in epoch, this process's shard) forever, from (epoch, start)."""
    while True:
        data.set_epoch(epoch)
        sampler = ShardedBatches(
            len(data), spec.batch_size, seed, epoch, start, dist.rank, dist.world_size
        )
        if sampler.batches_per_epoch() == 0:
            raise ConfigError(
                f"{len(data)} training pairs are fewer than one batch of {spec.batch_size}: "
                "lower training.batch_size or give more data"
            )
        loader = DataLoader(data, batch_sampler=sampler, num_workers=spec.num_workers)
        for offset, batch in enumerate(loader):
            yield epoch, start + offset, batch
        epoch, start = epoch + 1, 0


def train(
    model: PixelCLIP,
    data: ImageTextPairs,
    spec: TrainingSpec,
    seed: int,
    checkpoint_dir: Path,
    dist: Dist | None = None,
    resume: bool = False,
    log=print,
    progress: bool = True,
    objective: Objective | None = None,
) -> TrainResult:
    """Train ``model`` in place; checkpoints go to ``checkpoint_dir`` (main process only).

    ``objective`` maps a batch (the data set's items stacked: images, tokens, groups, and
    whatever else it yields) to the loss; the default is the multimodal InfoNCE.
    """
    dist = dist or Dist()
    objective = objective or clip_objective
    clamp = resolve_objective(model, spec.loss) == "infonce"  # SigLIP's temperature is free
    device = next(model.parameters()).device
    model.requires_grad_(True)  # what is trained is decided here, whatever froze it before
    freeze_towers(model, spec.freeze)
    model.train()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, spec.weight_decay), lr=spec.lr, betas=spec.betas, eps=spec.eps
    )
    steps = total_steps(spec, len(data))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(spec.warmup_steps, steps)
    )
    step, epoch, start_batch, history = 0, 0, 0, []
    if resume:
        state = load_checkpoint(checkpoint_dir)
        model.clip.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, epoch, start_batch = state["step"], state["epoch"], state["next_batch"]
        history = state["history"]
        log(f"resumed at step {step} (epoch {epoch}, batch {start_batch})")
    if hasattr(data, "preload"):  # decode once here, not once per DataLoader worker
        data.preload()
    net = DistributedDataParallel(model) if dist.world_size > 1 else model
    trainable = [p for p in model.parameters() if p.requires_grad]
    precision = precision_mod.resolve(spec.precision, device)
    log(f"training {steps} steps of {spec.batch_size} pairs ({len(data)} pairs), {precision}")

    def checkpoint(next_epoch: int, next_batch: int) -> None:
        if dist.main:
            save_checkpoint(
                checkpoint_dir,
                {
                    "model": model.clip.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "epoch": next_epoch,
                    "next_batch": next_batch,
                    "history": history,
                },
            )

    bar = tqdm(total=steps, initial=step, disable=not (progress and dist.main), desc="train")
    batches = _batches(data, spec, seed, dist, epoch, start_batch)
    seen, started, saving = 0, time.perf_counter(), 0.0  # saving: checkpoint I/O time
    while step < steps:
        epoch, batch_index, batch = next(batches)
        loss_value = 0.0
        micro = list(zip(*(part.chunk(spec.accum_steps) for part in batch), strict=True))
        for i, parts in enumerate(micro):
            sync = i == len(micro) - 1 or dist.world_size == 1
            context = net.no_sync() if not sync else contextlib.nullcontext()
            with context, precision_mod.autocast(precision, device):
                parts = tuple(part.to(device) for part in parts)
                loss = objective(net, model, parts, spec, dist)
            (loss / len(micro)).backward()
            loss_value += loss.item() / len(micro)
        if spec.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, spec.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if clamp:
            with torch.no_grad():
                model.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        step += 1
        seen += spec.batch_size
        lr = optimizer.param_groups[0]["lr"]
        history.append([step, loss_value, lr])
        rate = seen / (time.perf_counter() - started - saving)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}", samples_s=f"{rate:.0f}")
        bar.update(1)
        if step % spec.log_every == 0 or step == steps:
            scale = model.clip.logit_scale.exp().item()
            log(
                f"step {step}/{steps} loss {loss_value:.4f} lr {lr:.2e} scale {scale:.1f} "
                f"{rate:.1f} samples/s"
            )
        if step % spec.checkpoint_every == 0 or step == steps:
            before = time.perf_counter()
            checkpoint(epoch, batch_index + 1)
            saving += time.perf_counter() - before
    bar.close()
    model.eval()
    elapsed = max(time.perf_counter() - started - saving, 1e-9)
    return TrainResult(step, seen / elapsed, history)  # samples/s of training, I/O excluded
