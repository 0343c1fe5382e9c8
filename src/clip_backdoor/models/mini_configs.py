"""The "mini" family: small ViT CLIPs with the real CLIP tokenizer (tests, offline pretraining).

Why: no pretrained weights can be downloaded on the project's machines, so every measurement uses
a CLIP small enough to train here. A ViT image tower is required (RVPT and the decomposition
analysis act on ViT blocks). Configs use open_clip's ``model_cfg`` schema so saved models load in
open_clip unchanged.
"""

from __future__ import annotations

import copy

from clip_backdoor.core.errors import ModelLoadError

CLIP_VOCAB_SIZE = 49408  # open_clip's SimpleTokenizer (OpenAI BPE)


def _mini_cfg(
    image_size: int, patch: int, width: int, layers: int, text_width: int, text_layers: int
) -> dict:
    return {
        "embed_dim": width,
        "quick_gelu": False,
        "vision_cfg": {
            "image_size": image_size,
            "patch_size": patch,
            "width": width,
            "layers": layers,
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": 32,
            "vocab_size": CLIP_VOCAB_SIZE,
            "width": text_width,
            "heads": max(1, text_width // 64),
            "layers": text_layers,
        },
    }


MINI_CONFIGS: dict[str, dict] = {
    # Pretraining target on this project's CPUs (about 13M parameters, 26 MB in fp16).
    "mini": _mini_cfg(image_size=64, patch=8, width=192, layers=4, text_width=192, text_layers=4),
    # Seconds to train: tests and the quick demo.
    "mini-tiny": _mini_cfg(
        image_size=32, patch=8, width=64, layers=2, text_width=64, text_layers=2
    ),
}


def is_mini(name: str) -> bool:
    return name in MINI_CONFIGS


def mini_config(name: str) -> dict:
    if name not in MINI_CONFIGS:
        raise ModelLoadError(f"unknown mini config '{name}' (known: {', '.join(MINI_CONFIGS)})")
    return copy.deepcopy(MINI_CONFIGS[name])
