"""Infer an open_clip ``model_cfg`` from a ViT CLIP state dict (OpenAI / open_clip key names).

Why: OpenAI checkpoints and bare state dicts carry no config. Widths, depths, patch size and
resolution are readable from tensor shapes; what is not (attention head width, GELU flavour) uses
CLIP's conventions: 64-wide heads, QuickGELU for OpenAI checkpoints.
"""

from __future__ import annotations

import torch

from clip_backdoor.core.errors import ModelLoadError


def _count_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {
        key[len(prefix) :].split(".")[0]
        for key in state_dict
        if key.startswith(prefix) and key.endswith(".attn.in_proj_weight")
    }
    return len(indices)


def infer_model_cfg(state_dict: dict[str, torch.Tensor], quick_gelu: bool = False) -> dict:
    if "visual.proj" not in state_dict or "visual.conv1.weight" not in state_dict:
        raise ModelLoadError(
            "cannot infer the architecture: not a ViT CLIP state dict with OpenAI/open_clip key "
            "names; give the architecture (an open_clip model name) explicitly"
        )
    conv = state_dict["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state_dict["ln_final.weight"].shape[0]
    return {
        "embed_dim": int(state_dict["text_projection"].shape[1]),
        "quick_gelu": quick_gelu,
        "vision_cfg": {
            "image_size": int(grid * patch),
            "patch_size": int(patch),
            "width": int(width),
            "layers": _count_blocks(state_dict, "visual.transformer.resblocks."),
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": int(state_dict["positional_embedding"].shape[0]),
            "vocab_size": int(state_dict["token_embedding.weight"].shape[0]),
            "width": int(text_width),
            "heads": max(1, int(text_width) // 64),
            "layers": _count_blocks(state_dict, "transformer.resblocks."),
        },
    }
