"""DECREE (Feng et al., CVPR 2023): is an image encoder backdoored? No labels, no text.

A backdoored encoder maps every image carrying its trigger to nearly one embedding, so a
*small* mask and pattern that make the embeddings of many clean images almost identical (mean
pairwise cosine above ``success``, 0.99) exist for it and not for a clean encoder, for which
only a mask covering most of the image does that. Score: PL1 = |mask|_1 / (H·W), the share of
the image the smallest successful mask covers; DECREE flags PL1 below 0.1 (its clean
encoders sit near or above it). Settings follow its public code for CLIP encoders: Adam at lr
0.5 (betas 0.5, 0.9) stepped down to 0.1 and 0.05, lambda from 1e-3 by factors of 5 with a
patience of 5 steps, floor 1e-7, early stop 35 steps after the best mask last shrank.

The suspected target is not part of DECREE (it has no labels); as evidence, the inverted
trigger is stamped on the clean images and the class the zero-shot head then predicts for
most of them is reported.
"""

from __future__ import annotations

import torch
from pydantic import Field
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.registry import SCANNERS
from clip_backdoor.scanning.base import ScanImages, Scanner, ScannerSpec, ScanSubject
from clip_backdoor.scanning.classes import predicted_class
from clip_backdoor.scanning.inversion import (
    BestMask,
    CostSchedule,
    MaskPattern,
    inverted_images,
    stepped_lr,
)


class DecreeSpec(ScannerSpec):
    steps: int = Field(600, ge=1, description="optimisation steps at most (early stop before)")
    lr: float = Field(0.5, gt=0, description="Adam's lr on the mask and pattern (DECREE: 0.5)")
    success: float = Field(
        0.99, gt=0, lt=1, description="mean pairwise cosine of triggered embeddings to reach"
    )
    patience: int = Field(5, ge=1, description="steps before lambda moves")
    early_stop: int = Field(35, ge=1, description="steps without a smaller successful mask")


def mean_pairwise_cosine(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine over the B·(B-1) ordered pairs of distinct rows, without the B x B matrix:
    |sum of unit rows|^2 counts every pair twice plus B ones on the diagonal."""
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    total = unit.sum(dim=0)
    n = len(unit)
    return (total @ total - n) / (n * (n - 1))


@SCANNERS.register("decree")
class Decree(Scanner):
    name = "decree"
    spec_type = DecreeSpec
    default_threshold = 0.1
    suspect_below = True

    def reference_threshold(self, reference_score: float) -> float:
        """Half the clean base model's PL1: a fine-tune of it that needs a much smaller mask
        to collapse its embeddings has learnt a shortcut its base did not have."""
        return 0.5 * reference_score

    def search(self, subject: ScanSubject, images: ScanImages, seed: int, progress: bool):
        spec, model = self.spec, subject.model
        device = next(model.parameters()).device
        precision = precision_mod.resolve(spec.precision, device)
        generator = torch.Generator().manual_seed(seed)
        size = images.pixels.shape[-1]
        trigger = MaskPattern(size, generator, device)
        optimizer = torch.optim.Adam(trigger.parameters(), lr=spec.lr, betas=(0.5, 0.9))
        cost = CostSchedule(1e-3, 5.0, spec.patience, 1e-7, 2 * spec.patience)
        best = BestMask()
        model.eval().requires_grad_(False)
        cosine = 0.0
        bar = tqdm(range(spec.steps), desc="decree", disable=not progress, leave=False)
        steps = 0
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = stepped_lr(step, spec.steps, spec.lr, (0.1, 0.05))
            batch = images.batch(images.draw(generator, spec.batch_size), device)
            with precision_mod.autocast(precision, device):
                features = model.encode_image(trigger(batch))
            similarity = mean_pairwise_cosine(features)
            loss = -similarity + cost.value * trigger.l1()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            cosine = float(similarity.detach())
            success = cosine > spec.success
            best.offer(trigger, success)
            cost.update(success)
            steps = step + 1
            bar.set_postfix(cos=f"{cosine:.3f}", pl1=f"{best.l1 / size**2:.3f}")
            if best.found and best.stale > spec.early_stop:
                break
        area = size * size
        pl1 = best.l1 / area if best.found else 1.0  # never collapsed: the whole image
        evidence = {"pl1": pl1, "steps": steps, "last_cosine": cosine, "found": best.found}
        target = None
        if best.found:
            target, share = predicted_class(subject, images, best.mask, best.pattern)
            evidence.update(stamped_prediction=target, stamped_share=share)
        pictures = inverted_images(best, images.batch(torch.tensor([0]), "cpu")[0])
        return pl1, target, evidence, pictures
