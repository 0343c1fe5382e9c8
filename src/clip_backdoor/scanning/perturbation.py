"""A universal additive perturbation (||delta||_inf <= eps) that sends clean images of the other
classes to one class through a class head, and how many held-out images it then sends there.

Shared by ``prompt_inspector`` (through a prompt learner and the plain zero-shot head) and
``perturbation_search`` (through a checkpoint's zero-shot head): signed-gradient descent on the
cross-entropy to the class, projected to the budget after every step.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.scanning.base import ScanImages, ScannerSpec
from clip_backdoor.scanning.classes import ClassHead
from clip_backdoor.scanning.classwise import ClasswiseSpec


class PerturbationSpec(ScannerSpec, ClasswiseSpec):
    """The settings of a class-wise universal-perturbation search (each scanner sets its eps)."""

    eps: float = Field(2 / 255, gt=0, le=1, description="L-inf budget of the perturbation")
    steps: int = Field(60, ge=1, description="descent steps per fully searched class")
    step_size: float | None = Field(None, gt=0, description="per-step change (default eps / 4)")
    batch_size: int = Field(16, ge=2)
    eval_images: int = Field(128, ge=8, description="images the final reach is measured on")
    templates: str = Field("simple", description="prompts of the zero-shot head")
    basis: Literal["pixels", "lines"] = Field(
        "pixels",
        description="pixels: one value per pixel; lines: a row profile plus a column profile "
        "per channel (6 x size values: stripes and grids, the shape of full-image periodic "
        "triggers such as SIG's, with far fewer degrees of freedom than pixels)",
    )


class UniversalPerturbation:
    """``ascend(head, target, steps)`` -> delta (1, 3, H, W); ``reach(head, target, delta)`` ->
    the share of held-out images of other classes it sends to ``target``. ``own`` maps a head's
    class index to the image set's label of the same class (absent: the set has none)."""

    def __init__(
        self,
        images: ScanImages,
        own: dict[int, int],
        eps: float,
        step: float,
        batch_size: int,
        eval_images: int,
        precision: str,
        device: torch.device,
        generator: torch.Generator,
        basis: str = "pixels",
    ) -> None:
        self.images, self.own, self.eps, self.step = images, own, eps, step
        self.basis = basis
        self.batch_size, self.precision, self.device = batch_size, precision, device
        self.generator = generator
        self.held = torch.randperm(len(images), generator=generator)[:eval_images]

    def parts(self) -> list[torch.Tensor]:
        """The optimised values: the whole delta, or its row and column profiles."""
        size = self.images.pixels.shape[-1]
        shapes = (
            [(1, 3, size, size)] if self.basis == "pixels" else [(1, 3, 1, size), (1, 3, size, 1)]
        )
        return [torch.zeros(shape, device=self.device, requires_grad=True) for shape in shapes]

    def compose(self, parts: list[torch.Tensor]) -> torch.Tensor:
        delta = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return delta.clamp(-self.eps, self.eps)

    def ascend(self, head: ClassHead, target: int, steps: int) -> torch.Tensor:
        parts = self.parts()
        exclude = self.own.get(target)
        for _ in range(steps):
            indices = self.images.draw(self.generator, self.batch_size, exclude)
            batch = self.images.batch(indices, self.device)
            with precision_mod.autocast(self.precision, self.device):
                logits = head.logits((batch + self.compose(parts)).clamp(0, 1)).float()
            labels = torch.full((len(batch),), target, device=self.device)
            grads = torch.autograd.grad(F.cross_entropy(logits, labels), parts)
            with torch.no_grad():
                for part, grad in zip(parts, grads, strict=True):
                    part -= self.step * grad.sign()
                    part.clamp_(-self.eps, self.eps)
        return self.compose(parts).detach()

    @torch.no_grad()
    def reach(self, head: ClassHead, target: int, delta: torch.Tensor) -> float:
        exclude = self.own.get(target)
        index = self.held
        if exclude is not None:
            index = index[self.images.labels[index] != exclude]
        hits = 0
        for start in range(0, len(index), 64):
            batch = self.images.batch(index[start : start + 64], self.device)
            with precision_mod.autocast(self.precision, self.device):
                logits = head.logits((batch + delta).clamp(0, 1))
            hits += int((logits.argmax(dim=1) == target).sum())
        return hits / max(len(index), 1)

    def pictures(self, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The perturbation (0 shown as grey) and one clean image with it added."""
        delta = delta[0].cpu()
        example = self.images.batch(torch.tensor([0]), "cpu")[0]
        return {
            "perturbation": (delta / (2 * self.eps) + 0.5).clamp(0, 1),
            "stamped": (example + delta).clamp(0, 1),
        }
