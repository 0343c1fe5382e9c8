"""Vectorised pasting of one square patch into a batch at per-image positions."""

from __future__ import annotations

from typing import Literal

import torch

from clip_backdoor.core.errors import ConfigError

Position = Literal["random", "center", "bottom_right", "top_left", "top_right", "bottom_left"]
POSITIONS = ("random", "center", "bottom_right", "top_left", "top_right", "bottom_left")


def check_fits(patch: int, height: int, width: int, what: str = "trigger") -> None:
    if patch > min(height, width):
        raise ConfigError(f"{what} of {patch} px is larger than the {height}x{width} image")


def positions(
    n: int, patch: int, height: int, width: int, where: str, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (rows, cols) of shape (n,) for a placement rule."""
    check_fits(patch, height, width)
    if where == "random":
        rows = torch.randint(0, height - patch + 1, (n,), generator=generator)
        cols = torch.randint(0, width - patch + 1, (n,), generator=generator)
        return rows, cols
    fixed = {
        "center": ((height - patch) // 2, (width - patch) // 2),
        "bottom_right": (height - patch, width - patch),
        "top_left": (0, 0),
        "top_right": (0, width - patch),
        "bottom_left": (height - patch, 0),
    }
    if where not in fixed:
        raise ConfigError(f"unknown patch position '{where}' (choose {', '.join(POSITIONS)})")
    row, col = fixed[where]
    return torch.full((n,), row), torch.full((n,), col)


def paste(
    images: torch.Tensor, patch: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Copy of ``images`` with ``patch`` (3, p, p) replacing the pixels at each (row, col).

    Differentiable with respect to ``patch`` (the dual-embedding optimisation uses that).
    """
    b, _, h, w = images.shape
    p = patch.shape[-1]
    check_fits(p, h, w)
    offsets = torch.arange(p, device=images.device)
    r = (rows.to(images.device).view(b, 1) + offsets).view(b, p, 1)
    c = (cols.to(images.device).view(b, 1) + offsets).view(b, 1, p)
    batch = torch.arange(b, device=images.device).view(b, 1, 1)
    out = images.permute(0, 2, 3, 1).clone()  # (B, H, W, 3): one advanced index per pixel
    out[batch, r, c] = patch.to(out.dtype).permute(1, 2, 0).expand(b, p, p, 3)
    return out.permute(0, 3, 1, 2).contiguous()
