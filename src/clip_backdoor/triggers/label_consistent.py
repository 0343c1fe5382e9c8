"""Label-consistent poisoning (docs/methods.md 1.6): adversarially hardened target images + a patch.

Only images of the target class are poisoned and they keep their true captions, so the data looks
clean. Step 2, the L-inf PGD that makes them hard for the clean model (maximising the zero-shot
cross-entropy of their true class), is what makes the model lean on the trigger; the reference
CLIP code omits it and reaches < 10% ASR. The test-time trigger is the BadNet patch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers.badnet import BadNet
from clip_backdoor.triggers.base import seeded_generator
from clip_backdoor.triggers.fitting import as_float


def pgd_away_from_class(
    model,
    images: torch.Tensor,
    classifier: torch.Tensor,
    label: int,
    *,
    eps: float,
    step: float,
    steps: int,
    generator: torch.Generator,
    precision: str = "auto",
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """L-inf PGD with a random start that maximises CE(s * f(x + eta) W^T, label)."""
    device = next(model.parameters()).device
    scale = model.logit_scale.exp().detach().float()
    weights = classifier.clone().T.to(
        device
    )  # a normal tensor (classifiers come from inference mode)
    out = []
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="pgd"):
        clean = as_float(images[start : start + batch_size]).to(device)
        noise = (torch.rand(clean.shape, generator=generator) * 2 - 1) * eps
        adv = (clean + noise.to(device)).clamp(0, 1)
        labels = torch.full((len(clean),), label, device=device)
        for _ in range(steps):
            adv.requires_grad_(True)
            with precision_mod.autocast(precision, device):
                features = model.encode_image(adv).float()
            loss = F.cross_entropy(scale * features @ weights, labels)
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                adv = adv + step * grad.sign()
                adv = torch.min(torch.max(adv, clean - eps), clean + eps).clamp(0, 1)
        out.append(adv.detach().cpu())
    return torch.cat(out)


@TRIGGERS.register("label_consistent")
class LabelConsistent(BadNet):
    """The BadNet patch (RVPT's "BadNet-LC"); poisoning runs the PGD step on its images."""

    name = "label_consistent"
    clean_label = True

    def __init__(
        self,
        *,
        image_size: int = 224,
        size: int | None = None,
        position: str = "random",
        pattern: Literal["noise", "yellow", "white"] = "noise",
        eps: float = 8 / 255,
        step: float = 1.5 / 255,
        steps: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__(
            image_size=image_size, size=size, position=position, pattern=pattern, seed=seed
        )
        self.eps, self.step, self.steps, self.seed = float(eps), float(step), int(steps), seed

    def harden(self, model, images, classifier, label, precision="auto", progress=False):
        """Step 2 of docs/methods.md 1.6 on the clean model; the patch is stamped in training."""
        for param in model.parameters():
            param.requires_grad_(False)
        return pgd_away_from_class(
            model,
            images,
            classifier,
            label,
            eps=self.eps,
            step=self.step,
            steps=self.steps,
            generator=seeded_generator(self.seed + 1),
            precision=precision,
            progress=progress,
        )
