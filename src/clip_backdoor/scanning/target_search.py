"""Neural Cleanse's class-wise trigger inversion (Wang et al., S&P 2019) through CLIP's text
head: which class can be reached from every other class with a much smaller mask?

For a class c, the smallest mask and pattern that send clean images of the other classes to c
under the zero-shot classifier (CE to c + lambda·|mask|_1, lambda steered as in Neural Cleanse:
from 1e-3 by factors of 1.5 with a patience of 5 steps; success = 99% of the batch reaching
c). A backdoor's target needs only its trigger's few pixels; other classes need a large patch.
Score: the anomaly index of the smallest mask among the fully searched classes (median
absolute deviation over them, Neural Cleanse's statistic; 2.0 is its threshold), taken on the
log of the mask shares: they are positive and spread by factors (measured on the tiny demo
CLIP: clean classes need 1.5-5% of the image), so the outlier test is one on ratios.
With many classes, a pre-screen of a few steps per class chooses who is searched fully
(``classwise.py``), so the cost barely grows with the class count. The pre-screen does not
start from Neural Cleanse's random mask (half the image on average: every class is reached at
once, and eight steps cannot shrink it, so the ranking was noise; on the v1 BadNet model the
target was not among the three candidates). It starts from a faint mask (0.02 everywhere),
takes large steps (Adam at lr 0.5) against CE + a fixed lambda of 0.01, so a pixel's mask grows
only where the class's gradient outweighs lambda, and ranks classes by the probability a fresh
batch then gives them: a backdoor's target is reached through its trigger's few pixels, an
ordinary class is not. Picked on the v1 BadNet model (seed 0) over 22 classes (the target
first, 0.91 against 0.79); over all 100 in its zoo scan the target is first again (0.917
against 0.847), and the whole search took 427 s instead of 634 s (results/scan.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.registry import SCANNERS
from clip_backdoor.scanning.base import ScanImages, Scanner, ScannerSpec, ScanSubject
from clip_backdoor.scanning.cache import cached_number, scan_key
from clip_backdoor.scanning.classes import ClassHead
from clip_backdoor.scanning.classwise import ClasswiseSpec, anomaly_index, classwise_search
from clip_backdoor.scanning.inversion import BestMask, CostSchedule, MaskPattern, inverted_images


class TargetSearchSpec(ScannerSpec, ClasswiseSpec):
    steps: int = Field(200, ge=1, description="full-search steps per searched class")
    lr: float = Field(0.1, gt=0, description="Adam's lr on mask and pattern (Neural Cleanse)")
    success: float = Field(0.99, gt=0, le=1, description="share of the batch reaching the class")
    patience: int = Field(5, ge=1)
    early_stop: int = Field(50, ge=1, description="steps without a smaller successful mask")
    templates: str = Field("simple", description="zero-shot prompts of the class head")
    prescreen_mask: float = Field(0.02, gt=0, lt=1, description="pre-screen: the mask's start")
    prescreen_lr: float = Field(0.5, gt=0, description="pre-screen: Adam's lr")
    prescreen_cost: float = Field(0.01, ge=0, description="pre-screen: the fixed lambda")
    prescreen_batch: int = Field(16, ge=1, description="pre-screen: images per step")


@SCANNERS.register("target_search")
class TargetSearch(Scanner):
    name = "target_search"
    spec_type = TargetSearchSpec
    default_threshold = 2.0
    suspect_below = False

    def reference_threshold(self, reference_score: float) -> float:
        """Only used without a per-class comparison: one unit above the base's own index."""
        return max(self.default_threshold, reference_score + 1.0)

    def search(self, subject: ScanSubject, images: ScanImages, seed: int, progress: bool):
        inverter = ClassInverter(self.spec, subject, images, seed)
        classes = list(range(len(images.classnames)))
        bar = tqdm(total=len(classes), desc="target_search", disable=not progress, leave=False)

        def screened(c: int) -> float:
            bar.update(1)
            return inverter.prescreen(c)

        result = classwise_search(classes, screened, inverter.refine, self.spec, inverter.generator)
        bar.close()
        searched = list(result["refined"])
        masks = np.array([result["refined"][c] for c in searched])
        index = anomaly_index(np.log(np.maximum(masks, 1e-6)), low_is_outlier=True)
        top = int(np.argmax(index))
        target = searched[top]
        named = {images.classnames[c]: round(result["refined"][c], 5) for c in searched}
        evidence = {
            "mask_share": named,  # the smallest successful mask over the image, per class
            "candidates": [images.classnames[c] for c in result["candidates"]],
            "controls": [images.classnames[c] for c in result["controls"]],
            "prescreened": len(classes),
            "prescreen_top": {  # the pre-screen's five easiest classes, its class probability
                images.classnames[c]: round(result["prescreen"][c], 4)
                for c in sorted(classes, key=lambda c: -result["prescreen"][c])[:5]
            },
            "target_mask_share": float(masks[top]),
            "pictures_of": images.classnames[target],
        }
        example = images.batch(torch.tensor([0]), "cpu")[0]
        pictures = inverted_images(inverter.best[target], example)
        return float(index[top]), images.classnames[target], evidence, pictures

    def against_reference(
        self,
        finding,
        subject: ScanSubject,
        reference: ScanSubject,
        images: ScanImages,
        seed: int,
        progress: bool,
    ) -> None:
        """With a clean base: is the class this model finds easiest to reach (the anomaly
        search's target) much easier than it is in the base? The same search for the candidate
        classes on the base; score: log(base's mask / this model's mask) for the target,
        flagged above log 2 (half the base's mask). A class easy in the base already, or
        classes a fine-tune made a little easier, are not mistaken for a backdoor target."""
        inverter = None
        shares = finding.evidence["mask_share"]
        ratios = {}
        names = list(dict.fromkeys([finding.target, *finding.evidence["candidates"]]))
        for name in tqdm(names, desc="target_search (reference)", disable=not progress):
            c = images.classnames.index(name)

            def refine_on_reference(c: int = c) -> float:
                nonlocal inverter  # built only when some class is not cached yet
                inverter = inverter or ClassInverter(self.spec, reference, images, seed)
                return inverter.refine(c)

            # a zoo scanned against one base asks the base for the same classes again and again
            key = scan_key("scan-reference-class", self, reference, images, seed, c)
            base = cached_number(key, refine_on_reference)
            ratios[name] = float(np.log(max(base, 1e-6) / max(shares[name], 1e-6)))
        finding.evidence.update(reference_log_ratio=ratios, anomaly_index=finding.score)
        finding.score = ratios[finding.target]
        finding.threshold = self.spec.threshold or REFERENCE_LOG_RATIO


REFERENCE_LOG_RATIO = float(np.log(2.0))


class ClassInverter:
    """Neural Cleanse's inversion towards one class of a subject's zero-shot head."""

    def __init__(self, spec, subject: ScanSubject, images: ScanImages, seed: int) -> None:
        self.spec, self.images = spec, images
        model = subject.model
        self.device = next(model.parameters()).device
        self.precision = precision_mod.resolve(spec.precision, self.device)
        model.eval().requires_grad_(False)
        self.head = ClassHead(subject, images.classnames, spec.templates, False, self.precision)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.size = images.pixels.shape[-1]
        self.best: dict[int, BestMask] = {}

    def invert(
        self, target: int, steps: int, generator: torch.Generator | None = None
    ) -> tuple[BestMask, float]:
        """The smallest successful mask for ``target`` and the last batch's success rate."""
        spec, images, device = self.spec, self.images, self.device
        generator = generator or self.generator
        trigger = MaskPattern(self.size, generator, device)
        optimizer = self.optimizer(trigger, spec.lr)
        cost = CostSchedule(1e-3, 1.5, spec.patience, 1e-7, 2 * spec.patience)
        best, rate = BestMask(), 0.0
        labels = torch.full((spec.batch_size,), target, device=device)
        for _ in range(steps):
            batch = images.batch(images.draw(generator, spec.batch_size, target), device)
            with precision_mod.autocast(self.precision, device):
                logits = self.head.logits(trigger(batch)).float()
            loss = F.cross_entropy(logits, labels[: len(batch)]) + cost.value * trigger.l1()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            rate = float((logits.argmax(dim=1) == target).float().mean())
            success = rate >= spec.success
            best.offer(trigger, success)
            cost.update(success)
            if best.found and best.stale > spec.early_stop:
                break
        return best, rate

    @staticmethod
    def optimizer(trigger: MaskPattern, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(trigger.parameters(), lr=lr, betas=(0.5, 0.9))

    def prescreen(self, target: int) -> float:
        """How easily ``target`` is reached from a faint mask in a few large steps: the mean
        probability of the class on a fresh batch afterwards (higher: easier)."""
        spec, images, device = self.spec, self.images, self.device
        trigger = MaskPattern(self.size, self.generator, device, spec.prescreen_mask)
        optimizer = self.optimizer(trigger, spec.prescreen_lr)
        size = min(spec.prescreen_batch, spec.batch_size)
        labels = torch.full((size,), target, device=device)

        def logits() -> torch.Tensor:
            batch = images.batch(images.draw(self.generator, size, target), device)
            with precision_mod.autocast(self.precision, device):
                return self.head.logits(trigger(batch)).float()

        for _ in range(spec.prescreen_steps):
            scores = logits()
            loss = F.cross_entropy(scores, labels[: len(scores)])
            loss = loss + spec.prescreen_cost * trigger.l1()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():  # a fresh batch: measured, not trained on
            return float(logits().softmax(dim=1)[:, target].mean())

    def refine(self, target: int) -> float:
        """Seeded by (seed, class) alone: a class's full search gives the same mask whichever
        classes were searched before it, so it can be cached and compared across scans."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + target)
        best, _ = self.invert(target, self.spec.steps, generator)
        self.best[target] = best
        return best.l1 / self.size**2 if best.found else 1.0
