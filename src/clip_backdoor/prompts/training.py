"""Training prompt learners on few-shot data with a frozen CLIP (docs/methods.md 3.1-3.2).

Why it is fast: the image tower is frozen, so each image's features are computed once for a
fixed set of augmented views (CoOp's random resized crop + flip, seeded per image and view) and
an epoch only samples a view per image: no epoch re-encodes an image. CoCoOp trains on the same
cached features (its meta-net reads them). The optimiser is Dassl's: SGD with momentum, one
warm-up epoch at a constant small lr, then cosine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torchvision import transforms
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.config import Strict
from clip_backdoor.engine.pairs import seeded_cpu_rng
from clip_backdoor.models.pixel_clip import PixelCLIP
from clip_backdoor.prompts.base import PromptLearner


class PromptTrainingSpec(Strict):
    """Dassl's defaults (CoOp/CoCoOp configs); epochs depend on the learner and shots."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.002, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0, description="epochs at the constant warmup_lr")
    warmup_lr: float = Field(1e-5, gt=0)
    views: int = Field(10, ge=0, description="cached augmented views per image (0: none)")
    precision: str = "auto"
    logit_scale: float | None = Field(
        None,
        gt=0,
        description="the CE's logit scale: the model's own exp(logit_scale) by default; 100 is "
        "CLIP's, the papers' (their OpenAI models learnt 100)",
    )


def epoch_lr(spec: PromptTrainingSpec, epoch: int) -> float:
    """Constant warm-up, then cosine over all epochs (Dassl's ConstantWarmupScheduler)."""
    if epoch < spec.warmup_epochs:
        return spec.warmup_lr
    return 0.5 * spec.lr * (1 + math.cos(math.pi * epoch / spec.epochs))


@dataclass
class AugmentedViews:
    """Seeded augmented views of few-shot images, recomputable on demand (no stored pixels).

    View v of image i is the same crop and flip every time it is asked for, so features cached
    for it match the pixels a trigger is later added to.
    """

    images: torch.Tensor  # (N, 3, H, W) in [0, 1] at model resolution
    views: int
    seed: int

    def __post_init__(self) -> None:
        size = self.images.shape[-1]
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
                transforms.RandomHorizontalFlip(),
            ]
        )

    @property
    def count(self) -> int:
        return max(1, self.views)

    def view(self, index: int, view: int) -> torch.Tensor:
        image = self.images[index]
        if self.views == 0:
            return image
        with seeded_cpu_rng((self.seed * 1_000_003 + index * 1_009 + view) % 2**31):
            return self.transform(image).clamp(0, 1)

    def batch(self, indices: Sequence[int], views: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.view(i, v) for i, v in zip(indices, views, strict=True)])


@torch.inference_mode()
def view_features(
    model: PixelCLIP,
    views: AugmentedViews,
    batch_size: int = 256,
    precision: str = "auto",
    progress: bool = False,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Normalised features (N, V, D) of every view of every image, encoded once (by
    ``encode`` if given, e.g. another read-out of the tower, else ``model.encode_image``)."""
    encode = encode or model.encode_image
    n, count = len(views.images), views.count
    pairs = [(i, v) for v in range(count) for i in range(n)]
    device = next(model.parameters()).device
    chunks = []
    for start in tqdm(
        range(0, len(pairs), batch_size), disable=not progress, desc="encode views", leave=False
    ):
        part = pairs[start : start + batch_size]
        images = views.batch([i for i, _ in part], [v for _, v in part]).to(device)
        with precision_mod.autocast(precision, device):
            chunks.append(encode(images).float().cpu())
    return torch.cat(chunks).view(count, n, -1).transpose(0, 1).contiguous()


def epoch_views(n: int, count: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's item order and the view each item is seen in, both seeded."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator)
    view = torch.randint(count, (n,), generator=generator)
    return order, view


def prompt_loss(
    learner: PromptLearner,
    model: PixelCLIP,
    features: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    scale: float | None = None,
) -> torch.Tensor:
    """CE of the cosine logits against the learnt class prompts, at ``scale`` (default: the
    model's own logit scale)."""
    scale = model.logit_scale.exp().detach() if scale is None else scale
    return F.cross_entropy(scale * learner.logits(features, classnames), labels)


def run_epochs(
    parameters: list[torch.nn.Parameter],
    spec: PromptTrainingSpec,
    n: int,
    count: int,
    seed: int,
    batch_loss: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    after_step: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
    lr_at: Callable[[int], float] | None = None,
) -> list[float]:
    """The shared loop: per epoch a seeded order and view per item, SGD, a per-epoch lr."""
    optimizer = optimizer or torch.optim.SGD(
        parameters, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    lr_at = lr_at or (lambda epoch: epoch_lr(spec, epoch))
    losses = []
    bar = tqdm(range(spec.epochs), disable=not progress, desc="prompt epochs")
    for epoch in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(epoch)
        order, view = epoch_views(n, count, seed, epoch)
        total, steps = 0.0, 0
        for start in range(0, n, spec.batch_size):
            items = order[start : start + spec.batch_size]
            loss = batch_loss(items, view[items], epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            total, steps = total + loss.item(), steps + 1
        losses.append(total / steps)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if log is not None:
            log(f"epoch {epoch + 1}/{spec.epochs} loss {losses[-1]:.4f} lr {lr_at(epoch):.2e}")
    return losses


def train_prompts(
    learner: PromptLearner,
    model: PixelCLIP,
    images: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    spec: PromptTrainingSpec,
    seed: int = 0,
    cached: bool = True,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> list[float]:
    """Fit ``learner`` with CE on few-shot images; ``cached=False`` re-encodes every batch
    (the reference's way, kept to check the cache changes nothing and for benchmarks)."""
    model.requires_grad_(False)
    views = AugmentedViews(images, spec.views, seed)
    precision = precision_mod.resolve(spec.precision, next(model.parameters()).device)
    table = view_features(model, views, precision=precision, progress=progress) if cached else None
    device = next(model.parameters()).device
    labels = labels.to(device)

    def batch_loss(items: torch.Tensor, view: torch.Tensor, epoch: int) -> torch.Tensor:
        if table is not None:
            features = table[items, view].to(device)
        else:
            with torch.no_grad(), precision_mod.autocast(precision, device):
                pixels = views.batch(items.tolist(), view.tolist()).to(device)
                features = model.encode_image(pixels).float()
        return prompt_loss(learner, model, features, labels[items], classnames, spec.logit_scale)

    learner.train()
    losses = run_epochs(
        list(learner.parameters()),
        spec,
        len(images),
        views.count,
        seed,
        batch_loss,
        log=log,
        progress=progress,
    )
    learner.eval()
    return losses
