"""CLIP models in pixel space: loading, saving and the small "mini" family."""

from clip_backdoor.models.loading import (
    LoadedCLIP,
    find_pretrained_mini,
    load_clip,
    load_model_spec,
    save_clip,
    tokenizer_for,
)
from clip_backdoor.models.mini_configs import MINI_CONFIGS
from clip_backdoor.models.pixel_clip import PixelCLIP, pixel_transform

__all__ = [
    "MINI_CONFIGS",
    "LoadedCLIP",
    "PixelCLIP",
    "find_pretrained_mini",
    "load_clip",
    "load_model_spec",
    "pixel_transform",
    "save_clip",
    "tokenizer_for",
]
