"""Mask-and-pattern trigger inversion, shared by DECREE and Neural Cleanse's class search.

Both search the smallest mask m (H, W) and a pattern p (3, H, W) such that (1 - m)·x + m·p
does what a trigger does, minimising task loss + lambda·|m|_1, and both steer lambda the same
way: raised while the trigger succeeds (so the mask shrinks), lowered while it fails, and reset
when it has fallen to nothing while succeeding. The smallest successful mask is kept.
"""

from __future__ import annotations

import math

import torch
from torch import nn

EPS = 1e-6


def _atanh_init(values: torch.Tensor) -> torch.Tensor:
    return torch.atanh((values - 0.5) * (2 - EPS))


class MaskPattern(nn.Module):
    """tanh-parametrised mask and pattern in [0, 1], drawn uniformly at random at the start
    (Neural Cleanse, DECREE), or the mask at one small value everywhere (``mask_init``): a
    few-step search must grow a mask where the task needs it, not shrink one from 0.5."""

    def __init__(
        self, size: int, generator: torch.Generator, device, mask_init: float | None = None
    ) -> None:
        super().__init__()
        mask = torch.rand((1, 1, size, size), generator=generator, dtype=torch.float64)
        pattern = torch.rand((1, 3, size, size), generator=generator, dtype=torch.float64)
        if mask_init is not None:
            mask = torch.full_like(mask, mask_init)
        self.mask_raw = nn.Parameter(_atanh_init(mask).float().to(device))
        self.pattern_raw = nn.Parameter(_atanh_init(pattern).float().to(device))

    def mask(self) -> torch.Tensor:
        return (torch.tanh(self.mask_raw) / (2 - EPS) + 0.5).clamp(0, 1)

    def pattern(self) -> torch.Tensor:
        return (torch.tanh(self.pattern_raw) / (2 - EPS) + 0.5).clamp(0, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mask = self.mask()
        return ((1 - mask) * images + mask * self.pattern()).clamp(0, 1)

    def l1(self) -> torch.Tensor:
        return self.mask().sum()


class CostSchedule:
    """DECREE's lambda controller (Neural Cleanse's, with a reset): ``update`` once per step."""

    def __init__(
        self, initial: float, factor: float, patience: int, minimum: float, reset_after: int
    ) -> None:
        self.initial, self.factor, self.patience = initial, factor, patience
        self.minimum, self.reset_after = minimum, reset_after
        self.value = initial
        self.up = self.down = self.low = 0

    def update(self, success: bool) -> None:
        if self.value < self.minimum and success:
            self.low += 1
            if self.low > self.reset_after:  # it fell to nothing and still succeeds
                self.value, self.up, self.down, self.low = self.initial, 0, 0, 0
                return
        else:
            self.low = 0
        self.up, self.down = (self.up + 1, 0) if success else (0, self.down + 1)
        if self.up > self.patience:
            self.value = min(self.value * self.factor, 1e5)
            self.up = 0
        elif self.down > self.patience:
            if self.value >= self.minimum:
                self.value /= self.factor
            self.down = 0


class BestMask:
    """The smallest successful mask so far, and how long it has not improved (early stop)."""

    def __init__(self) -> None:
        self.l1 = math.inf
        self.mask: torch.Tensor | None = None
        self.pattern: torch.Tensor | None = None
        self.stale = 0

    def offer(self, trigger: MaskPattern, success: bool) -> None:
        l1 = float(trigger.l1().detach())
        if success and l1 < self.l1:
            self.l1, self.stale = l1, 0
            self.mask = trigger.mask().detach()[0, 0].cpu().clone()
            self.pattern = trigger.pattern().detach()[0].cpu().clone()
        elif self.mask is not None:
            self.stale += 1

    @property
    def found(self) -> bool:
        return self.mask is not None


def stepped_lr(step: int, total: int, lr: float, later: tuple[float, float]) -> float:
    """DECREE's piecewise lr: ``lr`` for the first 20% of the steps, then ``later`` at 20%
    and 50% (its 1,000-epoch schedule of lr, 0.1, 0.05 at epochs 200 and 500)."""
    if step < 0.2 * total:
        return lr
    return later[0] if step < 0.5 * total else later[1]


def inverted_images(best: BestMask, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """The inverted mask, pattern, mask·pattern and one clean image stamped with it."""
    if not best.found:
        return {}
    mask, pattern = best.mask, best.pattern
    stamped = (1 - mask) * example + mask * pattern
    return {
        "mask": mask.expand(3, -1, -1).clone(),
        "pattern": pattern,
        "trigger": mask * pattern,
        "stamped": stamped.clamp(0, 1),
    }
