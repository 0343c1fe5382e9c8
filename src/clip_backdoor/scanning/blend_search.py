"""Does a faint signal over the whole image send clean images to one class? A Blended or SIG
backdoor's answer: towards its target, far more often than towards any other class.

A patch search (``patch_search``) cannot catch a trigger with no place: Blended mixes a noise
image into every pixel, SIG adds a sinusoid (results/scan.md: SIG escaped every scanner). The
trigger form here is an additive signal bounded by ``eps`` (L-inf) and drawn at the model's
patch-grid scale (``grid`` x ``grid`` values upsampled to the image: Blended's 16 x 16 noise and
a sinusoid of a few periods are both in that span, a per-pixel adversarial texture is not). The
same three steps as ``patch_search``: an untargeted sweep from a few seeded starts names the
suspects, each suspect and the seeded controls get one targeted search, and the suspect's
reach is judged against the controls' at the stated false-alarm rate (``calibration.py``), or,
with a reference, each class's gain over the reference's.

The bound and the step count were set on the zoo's fitted part only (v1 Blended towards
butterfly, v2 SIG towards pizza, the two public bases). A full-image trigger fires only near
its trained amplitude (Blended at alpha 0.2: 93% at 0.2, 2% at 0.1; SIG at 60/255: 88% at 0.2,
5% at 0.1), so ``eps`` is 0.2. At that bound a few dozen steps send images to almost any class
of a small CLIP (a universal adversarial perturbation), so each class gets only 10 steps: a
class the model already has a shortcut to is reached in them, an ordinary one is not (Blended:
statistic 5.05 against 4.42 with 24 controls; the bases 1.70 and 1.37; at 0.1 and 40 steps the
Blended model scored 3.50 against 5.45). The v2 SIG model is still missed: neither the sweep
nor a targeted search finds its sinusoid in 10 steps (1 of 64 images), and more freedom
(lr 0.3, a 64-value grid) reaches the controls as well (51 of 64 for pizza, up to 64 for
controls).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from clip_backdoor.core.registry import SCANNERS
from clip_backdoor.scanning.base import ScanImages, ScanSubject
from clip_backdoor.scanning.patch_search import ClassReacher, ClassReachSpec, PatchSearch


class BlendSearchSpec(ClassReachSpec):
    eps: float = Field(
        0.2,
        gt=0,
        le=1,
        description="L-inf bound of the additive signal: Blended at alpha 0.2 moves a pixel up "
        "to 0.2 (the v1 Blended zoo model fires at 93% there, 45% at 0.15, 2% at 0.1)",
    )
    grid: int = Field(16, ge=1, description="values per side of the signal, upsampled")
    steps: int = Field(
        10,
        ge=1,
        description="targeted steps per searched class: few, so that a class is reached only "
        "through a shortcut the model already has (at 40 steps any class is reached)",
    )
    controls: int = Field(
        24, ge=2, description="seeded ordinary classes: the null (cheap at 10 steps each)"
    )
    batch: int = Field(16, ge=1, description="images per step")
    starts: int = Field(4, ge=1, description="seeded starts of the untargeted sweep")
    lr: float = Field(0.05, gt=0, description="Adam's lr on the signal")


@SCANNERS.register("blend_search")
class BlendSearch(PatchSearch):
    name = "blend_search"
    in_all = False  # until the varied zoo judges it: --budget fast|thorough or by name
    spec_type = BlendSearchSpec

    @staticmethod
    def searcher(spec, subject: ScanSubject, images: ScanImages, seed: int) -> BlendSearcher:
        return BlendSearcher(spec, subject, images, seed)


class BlendSearcher(ClassReacher):
    """The searches of one blend scan: signals instead of placed patches."""

    def signals(self, count: int, generator: torch.Generator) -> torch.Tensor:
        grid = min(self.spec.grid, self.size)
        raw = torch.rand((count, 3, grid, grid), generator=generator) - 0.5
        return raw.to(self.device).requires_grad_(True)

    def blend(self, images: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """images (n, k, 3, H, W) plus each row's signal (n, 3, g, g), clamped to [0, 1]."""
        delta = self.spec.eps * torch.tanh(raw)
        delta = F.interpolate(delta, size=(self.size, self.size), mode="bilinear")
        return (images + delta.unsqueeze(1)).clamp(0, 1)

    def sweep(self) -> list[int]:
        spec = self.spec
        generator = torch.Generator().manual_seed(self.seed)
        raw = self.signals(spec.starts, generator)
        optimizer = torch.optim.Adam([raw], lr=spec.lr)
        k = spec.sweep_batch
        for _ in range(spec.sweep_steps):
            pixels = self.blend(self.batch(spec.starts, k, generator, None), raw)
            logp = F.log_softmax(self.logits(pixels.flatten(0, 1)), dim=-1)
            mean = logp.view(spec.starts, k, -1).mean(dim=1)
            loss = -torch.logsumexp(mean * 4, dim=-1).sum() / 4
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.passes["forward_backward"] += spec.starts * k
        with torch.no_grad():
            held = min(spec.sweep_images, len(self.images))
            base = self.batch(1, held, generator, None).expand(spec.starts, -1, -1, -1, -1)
            predicted = self.logits(self.blend(base, raw).flatten(0, 1)).argmax(dim=-1)
            self.passes["forward"] += spec.starts * held
        best: dict[int, float] = {}
        for row in predicted.view(spec.starts, held):
            label = int(row.mode().values)
            best[label] = max(best.get(label, 0.0), float((row == label).float().mean()))
        return sorted(best, key=lambda c: -best[c])[: spec.candidates]

    def reach(self, target: int) -> dict:
        spec = self.spec
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + target)
        raw = self.signals(1, generator)
        optimizer = torch.optim.Adam([raw], lr=spec.lr)
        for _ in range(spec.steps):
            pixels = self.blend(self.batch(1, spec.batch, generator, target), raw)
            logits = self.logits(pixels.flatten(0, 1))
            labels = torch.full((len(logits),), target, device=self.device)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.passes["forward_backward"] += spec.batch
        with torch.no_grad():
            n = spec.eval_images
            pixels = self.blend(self.batch(1, n, generator, target), raw)
            hits = int((self.logits(pixels.flatten(0, 1)).argmax(dim=-1) == target).sum())
            self.passes["forward"] += n
        return {"hits": hits, "total": n, "signal": raw.detach().cpu()}

    def placement(self, found: dict) -> dict:
        return {"signal": {"eps": self.spec.eps, "grid": min(self.spec.grid, self.size)}}

    def pictures(self, found: dict) -> dict[str, torch.Tensor]:
        raw = found["signal"].to(self.device)
        example = self.images.batch(torch.tensor([0]), self.device).view(1, 1, 3, self.size, -1)
        stamped = self.blend(example, raw)[0, 0].cpu()
        delta = stamped - example[0, 0].cpu()
        return {
            "pattern": (0.5 + delta / (2 * self.spec.eps)).clamp(0, 1),
            "trigger": delta.abs() / self.spec.eps,
            "stamped": stamped,
        }
