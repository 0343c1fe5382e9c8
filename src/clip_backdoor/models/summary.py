"""What a loaded model is, as the toolkit sees it (``clip-backdoor info``, run records)."""

from __future__ import annotations


def _tower(module) -> str:
    return "none" if module is None else type(module).__name__


def _tokenizer(tokenizer) -> str:
    if tokenizer is None:
        return "none (no text tower)"
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None:
        source = getattr(inner, "name_or_path", "") or "?"
        return f"{type(inner).__name__} ({source})"
    return f"{type(tokenizer).__name__} (open_clip, OpenAI BPE)"


def describe_model(model) -> dict:
    """Family, towers, resolution, preprocessing, tokenizer, objective and size of a model."""
    clip = model.clip
    cfg = model.preprocess_cfg
    params = sum(p.numel() for p in clip.parameters())
    image = sum(p.numel() for n, p in clip.named_parameters() if model.tower_of(n) == "image")
    bias = model.logit_bias
    return {
        "name": model.name,
        "family": model.family,
        "image_tower": _tower(getattr(clip, "visual", None)),
        "text_tower": _tower(getattr(clip, "text", None) or getattr(clip, "transformer", None)),
        "resolution": model.image_size,
        "embed_dim": model.model_cfg.get("embed_dim"),
        "normalisation": {"mean": cfg["mean"], "std": cfg["std"]},
        "resize": f"{cfg.get('resize_mode', 'shortest')}, {cfg.get('interpolation', 'bicubic')}",
        "preprocessing_from": cfg.get("source", "model config"),
        "tokenizer": _tokenizer(model.tokenizer),
        "context_length": model.context_length,
        "objective": model.objective,
        "logit_scale": round(float(model.logit_scale.detach().exp()), 4),
        "logit_bias": None if bias is None else round(float(bias.detach()), 4),
        "parameters": params,
        "image_parameters": image,
    }
