"""CleanCLIP: clean fine-tuning with in-modal self-supervision (docs/methods.md 4.2).

L = lambda_clip * L_CLIP + lambda_ss * L_SS on clean pairs, where L_SS contrasts each image with
its AutoAugment view (torchvision, ImageNet policy, redrawn every epoch) and each caption with
its EDA view (one per caption, fixed). Why it should help: the backdoor couples a trigger with
the target caption across modalities; learning each modality on its own again breaks that
spurious link. The engine trains it; only the batch items and the objective differ from FT.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Dataset
from torchvision import transforms

from clip_backdoor.core.config import Strict
from clip_backdoor.core.registry import DEFENSES
from clip_backdoor.data.eda import eda
from clip_backdoor.defenses.ft import FineTune
from clip_backdoor.engine.config import SourceSpec, TrainingSpec
from clip_backdoor.engine.distributed import Dist
from clip_backdoor.engine.loss import (
    contrastive_targets,
    gather_batch,
    pair_loss,
    resolve_objective,
    sigmoid_loss,
)
from clip_backdoor.engine.pairs import ImageTextPairs, seeded_cpu_rng, single_thread
from clip_backdoor.models import PixelCLIP


class CleanCLIPSpec(Strict):
    data: list[SourceSpec] = Field(
        default_factory=lambda: [SourceSpec(name="caltech101", templates="photo")],
        description="the defender's clean pairs (captions from templates for class sets)",
    )
    shots: int | None = Field(16, ge=1, description="k images per class (None: every image)")
    lambda_clip: float = Field(1.0, ge=0)
    lambda_ss: float = Field(1.0, ge=0)
    eda_alpha: float = Field(0.1, gt=0, le=1, description="EDA's rate for each operation")
    training: TrainingSpec
    cache: bool = True


class SelfSupervisedPairs(Dataset):
    """Items of ``pairs`` plus an AutoAugment view of the image and an EDA view of the caption."""

    def __init__(self, pairs: ImageTextPairs, eda_alpha: float) -> None:
        self.pairs, self.eda_alpha = pairs, eda_alpha
        self.autoaugment = transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET)
        self._eda: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.pairs.set_epoch(epoch)

    def preload(self) -> None:
        self.pairs.preload()

    def eda_tokens(self, caption: str) -> torch.Tensor:
        """The caption's one EDA view, seeded by the caption itself (the same in every epoch)."""
        if caption not in self._eda:
            digest = hashlib.sha256(f"{self.pairs.seed}|{caption}".encode()).digest()
            text = eda(caption, int.from_bytes(digest[:4], "little"), self.eda_alpha)
            self._eda[caption] = self.pairs.tokenizer([text])[0]
        return self._eda[caption]

    def __getitem__(self, index: int):
        image, tokens, group = self.pairs[index]
        caption = self.pairs.caption(index, image)
        with seeded_cpu_rng(self.pairs.item_seed(index) ^ 0x5EED), single_thread():
            view = self.autoaugment(self.pairs.plain_image(index)).float() / 255
        return image, tokens, group, view, self.eda_tokens(caption)


def in_modal_loss(
    features: torch.Tensor,
    views: torch.Tensor,
    scale: torch.Tensor,
    groups: torch.Tensor | None,
    dist: Dist,
    objective: str = "infonce",
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each item against every view in the (global) batch, its own view the positive: CE for
    InfoNCE models (as CleanCLIP), the sigmoid loss with the model's bias for SigLIP ones."""
    features, views, groups = gather_batch(features, views, groups, dist.rank, dist.world_size)
    if objective == "sigmoid":
        return sigmoid_loss(features, views, scale, bias, groups)
    logits = scale.exp() * features @ views.T
    if groups is None:
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
    return F.cross_entropy(logits, contrastive_targets(groups))


def cleanclip_objective(spec: CleanCLIPSpec):
    """The engine objective: the model's loss on the pairs plus the two in-modal losses."""

    def objective(net, model: PixelCLIP, batch, training, dist: Dist) -> torch.Tensor:
        images, tokens, groups, image_views, text_views = batch
        n = len(images)
        image_features, text_features, _ = net(
            torch.cat([images, image_views]), torch.cat([tokens, text_views])
        )
        image_features, text_features = image_features.float(), text_features.float()
        kind = resolve_objective(model, training.loss)
        scale, bias = model.logit_scale.float(), model.logit_bias
        bias = None if bias is None else bias.float()
        text_groups = groups if training.label_aware else None  # templated captions repeat
        loss_pairs = pair_loss(
            kind,
            image_features[:n],
            text_features[:n],
            scale,
            bias,
            text_groups,
            dist.rank,
            dist.world_size,
        )
        image_ss = in_modal_loss(
            image_features[:n], image_features[n:], scale, None, dist, kind, bias
        )
        text_ss = in_modal_loss(
            text_features[:n], text_features[n:], scale, text_groups, dist, kind, bias
        )
        loss_ss = (image_ss + text_ss) / 2
        return spec.lambda_clip * loss_pairs + spec.lambda_ss * loss_ss

    return objective


@DEFENSES.register("cleanclip")
class CleanCLIP(FineTune):
    kind = "cleanclip"
    spec_type = CleanCLIPSpec

    def dataset(self, pairs):
        return SelfSupervisedPairs(pairs, self.spec.eda_alpha)

    def objective(self):
        return cleanclip_objective(self.spec)
