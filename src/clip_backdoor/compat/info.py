"""``clip-backdoor info MODEL``: what a model is, as the toolkit sees it, and what runs on it."""

from __future__ import annotations

from clip_backdoor.compat.methods import METHODS, applies
from clip_backdoor.models.summary import describe_model


def model_info(model) -> dict:
    """``describe_model`` plus which methods apply to the model (or why not)."""
    methods = {}
    for method in METHODS:
        ok, reason = applies(model, method)
        methods[method.name] = "applies" if ok else reason
    return {**describe_model(model), "methods": methods}


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
