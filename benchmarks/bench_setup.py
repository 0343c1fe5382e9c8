"""What every model benchmark does first: load the model frozen and say where it runs."""

from __future__ import annotations

import torch

import clip_backdoor  # noqa: F401  (torchvision shim before open_clip)
from clip_backdoor.core import precision
from clip_backdoor.models import load_clip


def frozen_model(name: str):
    """(model, tokenizer, precision mode) of ``name``, frozen; prints the CPU and precision."""
    loaded = load_clip(name)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.requires_grad_(False)
    mode = precision.resolve("auto")
    print(f"CPU: {precision.cpu_name()}; precision {mode}; threads {torch.get_num_threads()}")
    return model, tokenizer, mode
