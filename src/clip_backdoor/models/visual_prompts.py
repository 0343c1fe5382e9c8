"""Deep visual prompts (VPT-deep) on a frozen ViT CLIP, saved and loaded as one folder.

Why: RVPT and VPT repair a CLIP by learning a few tokens per image-tower block while every weight
of the model stays as it was; the result is a small folder applied on top of that model. Layout:
``visual_prompt.json`` (length, prompted blocks, width, the model it was tuned on and that
model's weight fingerprint) and ``visual_prompt.safetensors`` (the prompts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from clip_backdoor.core.errors import ConfigError, ModelLoadError
from clip_backdoor.core.info_files import read_info
from clip_backdoor.models.image_tower import ImageTower, check_prompt_depth
from clip_backdoor.models.pixel_clip import PixelCLIP

VISUAL_PROMPT_FILE = "visual_prompt.json"
VISUAL_PROMPT_STATE = "visual_prompt.safetensors"


class VisualPrompts(nn.Module):
    """``blocks`` sets of ``length`` tokens replacing the prompt positions from block ``first``
    on (docs/methods.md 4.4): no positional embedding, entering after ln_pre."""

    def __init__(
        self, tower: ImageTower, length: int, first: int | None = None, blocks: int | None = None
    ) -> None:
        super().__init__()
        first = tower.layers // 4 if first is None else first  # the last 3/4 of the blocks
        blocks = tower.layers - first if blocks is None else blocks
        if length < 1:  # no upper cap: RVPT's 50 tokens on ViT-B/32's 49 patches are the paper's
            raise ConfigError(f"prompt length {length} must be at least 1")
        if blocks < 0:
            raise ConfigError(f"the number of prompted blocks cannot be negative ({blocks})")
        check_prompt_depth(tower, blocks, first)
        self.length, self.first, self.blocks = length, first, blocks
        bound = math.sqrt(6.0 / (3 * tower.patch_size**2 + tower.width))  # VPT's init
        self.prompts = nn.Parameter(
            torch.empty(blocks, length, tower.width).uniform_(-bound, bound)
        )

    @property
    def config(self) -> dict:
        return {"length": self.length, "first": self.first, "blocks": self.blocks}


class PromptedCLIP(PixelCLIP):
    """A PixelCLIP whose image tower runs with deep visual prompts; the CLIP is shared, frozen."""

    def __init__(self, base: PixelCLIP, prompts: VisualPrompts) -> None:
        self.share(base)
        self.visual_prompts = prompts
        self.tower = ImageTower.of(base)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        p = self.visual_prompts
        features = self.tower.forward(self.normalize(images), p.prompts, p.first)
        return F.normalize(features, dim=-1) if normalize else features

    def fingerprint_state(self) -> dict[str, torch.Tensor]:
        state = super().fingerprint_state()
        state.update(
            {f"visual_prompts.{k}": v for k, v in self.visual_prompts.state_dict().items()}
        )
        return state


def is_visual_prompt_folder(path: str | Path) -> bool:
    return (Path(path) / VISUAL_PROMPT_FILE).is_file()


def save_visual_prompts(prompts: VisualPrompts, folder: Path, info: dict) -> None:
    """Write ``prompts`` into ``folder`` (an existing, usually temporary, directory)."""
    config = {**prompts.config, "width": int(prompts.prompts.shape[-1]), **info}
    (folder / VISUAL_PROMPT_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(
        {"prompts": prompts.prompts.detach().cpu().contiguous()}, str(folder / VISUAL_PROMPT_STATE)
    )


def visual_prompt_info(folder: str | Path) -> dict:
    return read_info(folder, VISUAL_PROMPT_FILE, "visual-prompt")


def load_visual_prompts(folder: str | Path, model: PixelCLIP) -> PromptedCLIP:
    """``model`` with the prompts of ``folder`` applied; made for another width: an error."""
    info = visual_prompt_info(folder)
    tower = ImageTower.of(model)
    if info.get("width") != tower.width:
        raise ModelLoadError(
            f"visual prompts {folder} were made for an image width of {info.get('width')}, "
            f"this model's is {tower.width} (another model)"
        )
    prompts = VisualPrompts(tower, info["length"], info["first"], info["blocks"])
    try:
        prompts.load_state_dict(load_file(str(Path(folder) / VISUAL_PROMPT_STATE)))
    except (SafetensorError, OSError, RuntimeError) as e:
        first = str(e).splitlines()[0]
        raise ModelLoadError(f"{folder}: visual prompts do not load ({first})") from None
    return PromptedCLIP(model, prompts.eval())
