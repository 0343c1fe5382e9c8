"""CLIP families: which one a model is, and a tiny randomly initialised model of each.

Why: the methods must run on the CLIPs users hold (open_clip's ViTs, RN50, ConvNeXt, EVA02,
SigLIP/SigLIP2, MobileCLIP, PE-Core; transformers' CLIP and SigLIP), each with its own
preprocessing, tokenizer and objective. Full-size ones cannot be trained or downloaded here, so
each family has a ``tiny-*`` model: the family's own architecture code (open_clip, timm or
transformers) with width and depth shrunk, at 32-64 px, built in a fraction of a second. The
compatibility table (``compat/``) and the tests run every method on them.

The timm towers are shrunk through timm's own model registry (``tiny_*`` names registered
here), because open_clip passes no size arguments to timm; a saved tiny model names them, so
loading it needs this module imported (``load_clip`` does).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import timm
from timm.models import register_model

from clip_backdoor.core.config import cache_root
from clip_backdoor.core.errors import ModelLoadError

TINY_TEXT = {"context_length": 16, "width": 64, "heads": 2, "layers": 2}
CLIP_VOCAB = 49408
SP_VOCAB = 1000  # the SentencePiece tokenizer built here for the SigLIP families


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    tiny: str  # the tiny model of this family (``load_clip(tiny)``)
    full: str  # a full-size model of it (the CPU smoke)


FAMILIES: tuple[Family, ...] = (
    Family("open_clip ViT", "OpenAI, LAION, MetaCLIP, DFN ViTs (GELU)", "tiny-vit", "ViT-B-32"),
    Family("quick-gelu ViT", "OpenAI/MetaCLIP weights' QuickGELU", "tiny-vit-quickgelu", ""),
    Family("RN50", "open_clip ModifiedResNet, attention pool", "tiny-rn", "RN50"),
    Family("ConvNeXt", "timm ConvNeXt tower", "tiny-convnext", ""),
    Family("EVA02", "timm EVA02 (rotary positions, SwiGLU)", "tiny-eva02", "EVA02-B-16"),
    Family("SigLIP", "timm ViT, attention-pool head, sigmoid loss", "tiny-siglip", ""),
    Family("SigLIP2", "SigLIP with Gemma-style text", "tiny-siglip2", ""),
    Family("MobileCLIP", "timm FastViT (MCi), mean 0 std 1", "tiny-mobileclip", "MobileCLIP-S1"),
    Family("PE-Core", "timm PE (EVA-style), attention pool", "tiny-pe-core", ""),
    Family("transformers CLIP", "Hugging Face CLIPModel folder", "tiny-hf-clip", ""),
    Family("transformers SigLIP", "Hugging Face SiglipModel folder", "tiny-hf-siglip", ""),
)


def family_of(model_cfg: dict) -> str:
    """The family name of a model config (see ``FAMILIES``)."""
    if model_cfg.get("family"):
        return {
            "transformers-clip": "transformers CLIP",
            "transformers-siglip": "transformers SigLIP",
        }.get(model_cfg["family"], model_cfg["family"])
    vision = model_cfg.get("vision_cfg", {})
    text = model_cfg.get("text_cfg", {})
    timm_name = str(vision.get("timm_model_name") or "").lower()
    if timm_name:
        if "siglip" in timm_name:
            tokenizer = str(text.get("hf_tokenizer_name") or "").lower()
            tanh = (text.get("act_kwargs") or {}).get("approximate") == "tanh"
            return "SigLIP2" if "siglip2" in tokenizer or tanh else "SigLIP"
        for key, family in (
            ("eva", "EVA02"),
            ("pe_core", "PE-Core"),
            ("fastvit", "MobileCLIP"),
            ("mci", "MobileCLIP"),
            ("convnext", "ConvNeXt"),
        ):
            if key in timm_name:
                return family
        return f"timm {timm_name}"
    if isinstance(vision.get("layers"), list | tuple):
        return "RN50"
    if model_cfg.get("quick_gelu"):
        return "quick-gelu ViT"
    return "open_clip ViT"


# --- tiny timm towers, registered with timm ---------------------------------------------------

_TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
_TINY_TIMM = {
    "tiny_vit_siglip": ("vit_base_patch16_siglip_224", _TINY_VIT),
    "tiny_eva02_clip": ("eva02_base_patch16_clip_224", _TINY_VIT),
    "tiny_vit_pe_core": ("vit_pe_core_base_patch16_224", _TINY_VIT),
    "tiny_fastvit_mci": ("fastvit_mci1", {"layers": (1, 1, 1, 1), "embed_dims": (8, 16, 32, 64)}),
    "tiny_convnext": ("convnext_base", {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}),
}


def _register(name: str, base: str, shrink: dict) -> None:
    def build(pretrained: bool = False, **kwargs):
        return timm.create_model(base, pretrained=False, **{**shrink, **kwargs})

    build.__name__ = name
    build.__module__ = __name__
    if name not in timm.list_models(name):
        register_model(build)


for _name, (_base, _shrink) in _TINY_TIMM.items():
    _register(_name, _base, _shrink)


def _timm_cfg(timm_name: str, image_size: int, pool: str, proj: str | None, embed: int) -> dict:
    return {
        "embed_dim": embed,
        "custom_text": True,
        "vision_cfg": {
            "image_size": image_size,
            "timm_model_name": timm_name,
            "timm_model_pretrained": False,
            "timm_pool": pool,
            "timm_proj": proj,
        },
        "text_cfg": {**TINY_TEXT, "vocab_size": CLIP_VOCAB},
    }


def _siglip_cfg(siglip2: bool) -> dict:
    cfg = _timm_cfg("tiny_vit_siglip", 32, "map", "none", 64)
    cfg["init_logit_bias"] = -10
    cfg["text_cfg"] = {
        **TINY_TEXT,
        "vocab_size": SP_VOCAB,
        "hf_tokenizer_name": str(built_tokenizer("sentencepiece")),
        "tokenizer_kwargs": {"clean": "canonicalize"},
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    }
    if siglip2:
        cfg["text_cfg"]["act_kwargs"] = {"approximate": "tanh"}
    return cfg


def _vit_cfg(quick_gelu: bool) -> dict:
    return {
        "embed_dim": 64,
        "quick_gelu": quick_gelu,
        "vision_cfg": {
            "image_size": 32,
            "patch_size": 8,
            "width": 64,
            "layers": 2,
            "head_width": 32,
        },
        "text_cfg": {**TINY_TEXT, "vocab_size": CLIP_VOCAB},
    }


def _open_clip_tiny(name: str) -> dict:
    builders = {
        "tiny-vit": lambda: _vit_cfg(False),
        "tiny-vit-quickgelu": lambda: _vit_cfg(True),
        "tiny-rn": lambda: {
            "embed_dim": 64,
            "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
            "text_cfg": {**TINY_TEXT, "vocab_size": CLIP_VOCAB},
        },
        "tiny-convnext": lambda: _timm_cfg("tiny_convnext", 64, "", "linear", 64),
        "tiny-eva02": lambda: _timm_cfg("tiny_eva02_clip", 32, "token", None, 64),
        "tiny-siglip": lambda: _siglip_cfg(False),
        "tiny-siglip2": lambda: _siglip_cfg(True),
        "tiny-mobileclip": lambda: {
            **_timm_cfg("tiny_fastvit_mci", 64, "avg", None, 64),
            "text_cfg": {**TINY_TEXT, "vocab_size": CLIP_VOCAB, "no_causal_mask": True},
        },
        "tiny-pe-core": lambda: _timm_cfg("tiny_vit_pe_core", 32, "map", None, 64),
    }
    return builders[name]()


TINY_PREPROCESS = {  # the family's own normalisation and resizing (open_clip's pretrained cfgs)
    "tiny-siglip": {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"},
    "tiny-siglip2": {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"},
    "tiny-pe-core": {
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "resize_mode": "squash",
        "interpolation": "bilinear",
    },
    "tiny-mobileclip": {"mean": [0.0] * 3, "std": [1.0] * 3, "interpolation": "bilinear"},
}
TINY_NAMES = tuple(f.tiny for f in FAMILIES)
# transformers' default configs, untrained and full size (CLIPConfig(): OpenAI's ViT-B/32;
# SiglipConfig(): SigLIP base/16 at 224 px), for the CPU smoke where no checkpoint downloads
FULL_TRANSFORMERS = ("hf-clip-vit-b-32", "hf-siglip-b-16")


def is_tiny(name: str) -> bool:
    """A model built here from code alone: a tiny family model or an untrained transformers one."""
    return name in TINY_NAMES or name in FULL_TRANSFORMERS


def tiny_open_clip_config(name: str) -> tuple[dict, dict | None]:
    """(model_cfg, preprocess_cfg) of an open_clip tiny family model."""
    if name not in TINY_NAMES or name.startswith("tiny-hf"):
        raise ModelLoadError(f"'{name}' is not a tiny open_clip family model")
    return _open_clip_tiny(name), copy.deepcopy(TINY_PREPROCESS.get(name))


def tiny_transformers_model(name: str):
    """A randomly initialised transformers CLIPModel / SiglipModel (seeded by the caller) and
    the folder of its tokenizer built here."""
    import transformers

    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": TINY_TEXT["context_length"],
    }
    vision = {**text, "image_size": 32, "patch_size": 8}
    del vision["max_position_embeddings"]
    if name == "hf-clip-vit-b-32":
        return transformers.CLIPModel(transformers.CLIPConfig()).eval(), built_tokenizer("clip-bpe")
    if name == "hf-siglip-b-16":
        config = transformers.SiglipConfig()
        return transformers.SiglipModel(config).eval(), built_tokenizer("sentencepiece")
    if name == "tiny-hf-clip":
        text = {**text, "vocab_size": CLIP_VOCAB, "bos_token_id": 49406, "eos_token_id": 49407}
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
        return transformers.CLIPModel(config).eval(), built_tokenizer("clip-bpe")
    text = {
        **text,
        "vocab_size": SP_VOCAB,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": None,
    }
    config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    return transformers.SiglipModel(config).eval(), built_tokenizer("sentencepiece")


def built_tokenizer(kind: str) -> Path:
    """A tokenizer built here once and cached: 'sentencepiece' (SigLIP's kind) or 'clip-bpe'."""
    from clip_backdoor.models.tokenizers import build_clip_bpe, build_sentencepiece

    folder = cache_root() / "tokenizers" / kind
    if (folder / "tokenizer_config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{kind}.", dir=folder.parent))
    (build_sentencepiece if kind == "sentencepiece" else build_clip_bpe)(staging)
    try:
        staging.rename(folder)
    except OSError:  # built meanwhile by another process: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    return folder
