"""Hugging Face ``transformers`` CLIP and SigLIP checkpoints as the toolkit's pixel-space model.

Why: a folder written by ``save_pretrained`` (``config.json`` + ``model.safetensors`` +
``preprocessor_config.json`` + tokenizer files) is the most common CLIP format in industry. The
wrapper below gives such a model open_clip's interface (``visual``/``text`` towers,
``encode_image``/``encode_text``, ``logit_scale`` and SigLIP's ``logit_bias``), so every method
that needs only the encoders runs on it unchanged. The transformers modules are registered under
``visual.*`` (image side) and ``text.*`` (text side), so freezing a tower works by name as for
open_clip; the transformers model itself is kept (unregistered, sharing every parameter) to save
the folder in its own format.

Features: CLIP projects the pooled output (``visual_projection``/``text_projection``); SigLIP's
pooled outputs are the embeddings (its attention-pool head and text head are part of the
towers). Text is fed padded to the model's context length, as each family was trained (SigLIP:
``padding="max_length"`` and no attention mask; CLIP: causal, read at the end token, so padding
cannot change it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from clip_backdoor.core.errors import ModelLoadError, first_line

CONFIG_FILE = "config.json"
# model_type in config.json -> (family name, objective)
FAMILIES = {
    "clip": ("transformers-clip", "infonce"),
    "siglip": ("transformers-siglip", "sigmoid"),
}
HALVES = {  # save_pretrained of one tower: loads as a model with that tower only
    "clip_vision_model": "clip",
    "siglip_vision_model": "siglip",
    "clip_text_model": "clip",
    "siglip_text_model": "siglip",
}
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL codes transformers stores


def is_transformers_folder(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and "model_type" in _read_config(path)


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path / CONFIG_FILE} is not valid JSON ({e})") from None


def _transformers():
    try:
        import transformers
    except ImportError:  # a pinned dependency; only a broken install lacks it
        raise ModelLoadError(
            "loading a transformers checkpoint needs `transformers` (pip install -e .)"
        ) from None
    transformers.utils.logging.set_verbosity_error()  # its notes and bars are not the user's
    transformers.utils.logging.disable_progress_bar()
    return transformers


class _Tower(nn.Module):
    """One transformers tower (and CLIP's projection) returning the family's embedding."""

    def __init__(self, model: nn.Module, projection: nn.Module | None, kind: str) -> None:
        super().__init__()
        self.model = model
        self.proj = projection
        self.kind = kind

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.kind == "image":
            pooled = self.model(pixel_values=inputs).pooler_output
        else:
            pooled = self.model(input_ids=inputs).pooler_output
        return pooled if self.proj is None else self.proj(pooled)


class TransformersCLIP(nn.Module):
    """open_clip's CLIP interface over a transformers ``CLIPModel`` or ``SiglipModel``."""

    def __init__(self, hf_model: nn.Module, model_type: str) -> None:
        super().__init__()
        self.model_type = model_type
        config = hf_model.config
        vision = getattr(hf_model, "vision_model", None)
        text = getattr(hf_model, "text_model", None)
        vision_config = getattr(config, "vision_config", config if vision is not None else None)
        self.visual = None
        if vision is not None:
            self.visual = _Tower(vision, getattr(hf_model, "visual_projection", None), "image")
            self.visual.image_size = int(vision_config.image_size)
        self.text = (
            _Tower(text, getattr(hf_model, "text_projection", None), "text")
            if text is not None
            else None
        )
        scale = getattr(hf_model, "logit_scale", None)
        # A tower saved alone has no temperature: CLIP's initial one (or SigLIP's) stands in.
        if scale is None:
            init = 10.0 if model_type == "siglip" else 1 / 0.07
            scale = nn.Parameter(torch.tensor(float(torch.tensor(init).log())))
        self.logit_scale = scale
        self.logit_bias = getattr(hf_model, "logit_bias", None)
        object.__setattr__(self, "hf", hf_model)  # shares every parameter; not a submodule

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.visual is None:
            raise ModelLoadError("this transformers checkpoint has no image tower (a text half)")
        features = self.visual(images)
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.text is None:
            raise ModelLoadError(
                "this transformers checkpoint has no text tower (a vision half): only methods "
                "that need image features alone run on it"
            )
        features = self.text(tokens)
        return nn.functional.normalize(features, dim=-1) if normalize else features


def model_class(model_type: str):
    """The transformers class that reads a ``config.json`` of this model type."""
    transformers = _transformers()
    classes = {
        "clip": transformers.CLIPModel,
        "siglip": transformers.SiglipModel,
        "clip_vision_model": transformers.CLIPVisionModelWithProjection,
        "clip_text_model": transformers.CLIPTextModelWithProjection,
        "siglip_vision_model": transformers.SiglipVisionModel,
        "siglip_text_model": transformers.SiglipTextModel,
    }
    if model_type not in classes:
        hint = (
            " (SigLIP 2 loads through open_clip: e.g. ViT-B-16-SigLIP2)"
            if model_type.startswith("siglip2")
            else ""
        )
        raise ModelLoadError(
            f"transformers model type '{model_type}' is not supported (supported: "
            f"{', '.join(classes)}){hint}"
        )
    return classes[model_type]


def load_transformers_model(path: Path) -> tuple[TransformersCLIP, dict, dict]:
    """(wrapped model, model_cfg, preprocess_cfg) of a ``save_pretrained`` folder."""
    config = _read_config(path)
    model_type = str(config.get("model_type"))
    cls = model_class(model_type)
    if not any(p.suffix in (".safetensors", ".bin") for p in path.iterdir()):
        raise ModelLoadError(f"{path} has a transformers config.json but no weights file")
    try:
        hf_model = cls.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{path}: transformers could not load it ({first_line(e)})") from None
    return describe(hf_model, read_preprocess(path, HALVES.get(model_type, model_type)))


def describe(hf_model: nn.Module, preprocess_cfg: dict | None = None):
    """(wrapped model, model_cfg, preprocess_cfg) of a transformers model in memory; the
    preprocessing defaults to its family's image processor's."""
    model_type = hf_model.config.model_type
    base_type = HALVES.get(model_type, model_type)
    wrapped = TransformersCLIP(hf_model.eval(), base_type)
    family, objective = FAMILIES[base_type]
    text_config = getattr(hf_model.config, "text_config", hf_model.config)
    model_cfg = {
        "family": family,
        "transformers_model_type": model_type,
        "objective": objective,
        "embed_dim": _embed_dim(hf_model.config, base_type),
        "vision_cfg": {"image_size": wrapped.visual.image_size if wrapped.visual else None},
        "text_cfg": {"context_length": int(getattr(text_config, "max_position_embeddings", 77))},
    }
    if preprocess_cfg is None:
        cls = processor_class(base_type)
        preprocess_cfg = preprocess_cfg_of(cls(), f"{cls.__name__} defaults")
    return wrapped, model_cfg, preprocess_cfg


def _embed_dim(config, base_type: str) -> int:
    if base_type == "clip":
        return int(getattr(config, "projection_dim", 512))
    text = getattr(config, "text_config", config)
    vision = getattr(config, "vision_config", config)
    return int(getattr(text, "projection_size", None) or vision.hidden_size)


def read_preprocess(path: Path, model_type: str) -> dict:
    """mean/std, resize mode and interpolation from ``preprocessor_config.json`` (else the
    family's processor defaults, noted in ``source``)."""
    transformers = _transformers()
    file = path / "preprocessor_config.json"
    if file.is_file():
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(
                str(path), local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{file}: not an image processor ({first_line(e)})") from None
        source = file.name
    else:
        cls = processor_class(model_type)
        processor, source = cls(), f"{cls.__name__} defaults (no preprocessor_config.json)"
    return preprocess_cfg_of(processor, source)


def processor_class(model_type: str):
    transformers = _transformers()
    if model_type == "clip":
        return transformers.CLIPImageProcessor
    return transformers.SiglipImageProcessor


def preprocess_cfg_of(processor, source: str) -> dict:
    size = dict(processor.size or {})
    if "shortest_edge" in size:
        resize_mode = "shortest"
    elif "height" in size and "width" in size:
        resize_mode = "squash"
    else:
        raise ModelLoadError(f"{source}: image size {size} is not understood")
    resample = int(getattr(processor.resample, "value", processor.resample))
    if resample not in _RESAMPLE:
        raise ModelLoadError(
            f"{source}: resample {resample} is unsupported (bilinear 2 and bicubic 3 are)"
        )
    return {
        "mean": [float(m) for m in processor.image_mean],
        "std": [float(s) for s in processor.image_std],
        "interpolation": _RESAMPLE[resample],
        "resize_mode": resize_mode,
        "source": source,
    }


def save_transformers(model: TransformersCLIP, folder: Path, preprocess_cfg: dict) -> None:
    """``save_pretrained`` of the transformers model, and its image processor's settings."""
    model.hf.save_pretrained(str(folder), safe_serialization=True)
    cls = processor_class(model.model_type)
    size = preprocess_cfg["size"]
    resample = {v: k for k, v in _RESAMPLE.items()}[preprocess_cfg["interpolation"]]
    shortest = preprocess_cfg["resize_mode"] == "shortest"
    processor = cls(
        size={"shortest_edge": size} if shortest else {"height": size, "width": size},
        crop_size={"height": size, "width": size},
        do_center_crop=shortest,
        resample=resample,
        image_mean=preprocess_cfg["mean"],
        image_std=preprocess_cfg["std"],
    )
    processor.save_pretrained(str(folder))
