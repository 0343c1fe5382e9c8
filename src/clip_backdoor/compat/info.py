"""``clip-backdoor info MODEL``: what a model is, as the toolkit sees it, and what runs on it."""

from __future__ import annotations

from clip_backdoor.compat.methods import METHODS, applies


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


def model_info(model) -> dict:
    """Family, towers, resolution, preprocessing, tokenizer, objective, size, methods."""
    clip = model.clip
    cfg = model.preprocess_cfg
    params = sum(p.numel() for p in clip.parameters())
    image = sum(p.numel() for n, p in clip.named_parameters() if model.tower_of(n) == "image")
    bias = model.logit_bias
    methods = {}
    for method in METHODS:
        ok, reason = applies(model, method)
        methods[method.name] = "applies" if ok else reason
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
        "methods": methods,
    }


def format_info(info: dict) -> str:
    norm = info["normalisation"]
    lines = [
        f"model           {info['name']}",
        f"family          {info['family']}",
        f"towers          image {info['image_tower']}, text {info['text_tower']}",
        f"resolution      {info['resolution']} px ({info['resize']}; from "
        f"{info['preprocessing_from']})",
        f"normalisation   mean {_floats(norm['mean'])}, std {_floats(norm['std'])}",
        f"tokenizer       {info['tokenizer']}, context {info['context_length']}",
        f"objective       {info['objective']} (logit scale {info['logit_scale']}"
        + (f", bias {info['logit_bias']})" if info["logit_bias"] is not None else ")"),
        f"embedding       {info['embed_dim']}",
        f"parameters      {info['parameters']:,} ({info['image_parameters']:,} in the image tower)",
        "methods:",
    ]
    width = max(len(name) for name in info["methods"])
    for name, status in info["methods"].items():
        lines.append(f"  {name:<{width}}  {status}")
    return "\n".join(lines)


def _floats(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
