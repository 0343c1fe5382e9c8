"""``load_clip`` / ``save_clip``: every way a CLIP reaches the toolkit, one return type.

Sources, tried in this order:
1. a directory in open_clip's layout (``open_clip_config.json`` + weights);
2. a weights file (``.safetensors``, ``.pt``/``.bin``/``.pth`` state dict, OpenAI TorchScript
   archive), with the architecture given by ``arch`` or inferred from the tensor shapes;
3. "mini-clip": the project's pretrained mini-CLIP (``models/mini-clip`` in the checkout, then
   ``../shared/models/mini-clip``, then the user cache); or a mini config name ("mini",
   "mini-tiny"), randomly initialised unless ``pretrained`` is a file;
4. an open_clip architecture name, with ``pretrained`` a tag (downloads) or a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import open_clip
import torch
from open_clip import CLIP, CustomTextCLIP
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import save_file

from clip_backdoor.data.fewshot_pool import FewShotPool
from clip_backdoor.errors import ModelLoadError
from clip_backdoor.models.architecture import infer_model_cfg
from clip_backdoor.models.mini_configs import is_mini, mini_config
from clip_backdoor.models.pixel_clip import PixelCLIP
from clip_backdoor.models.safe_checkpoint import read_state_dict

PRETRAINED_MINI = (
    "mini-clip"  # the project's pretrained mini-CLIP (recipes/mini_clip_pretrain.yaml)
)
# The committed measuring models, by name: v1 (label-aware, every train image) and v2 (web-like
# captions, a held-out few-shot pool; recipes/mini_clip_v2_pretrain.yaml).
PRETRAINED_MINIS = (PRETRAINED_MINI, "mini-clip-v2")
_CHECKOUT = Path(__file__).resolve().parents[3]
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


class LoadedCLIP(NamedTuple):
    model: PixelCLIP
    preprocess: object  # PIL image -> tensor in [0, 1]
    tokenizer: object  # list[str] -> LongTensor (B, context_length)


def load_clip(
    source: str | os.PathLike,
    pretrained: str | os.PathLike | None = None,
    *,
    arch: str | dict | None = None,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> LoadedCLIP:
    """Load a CLIP as a pixel-space model plus its preprocess and tokenizer (see module doc)."""
    source = str(source)
    if source in PRETRAINED_MINIS and not Path(source).is_dir():
        source = str(find_pretrained_mini(source))
    path = Path(source).expanduser()
    if path.is_dir():
        model = _from_directory(path)
    elif path.suffix in WEIGHT_SUFFIXES or path.is_file():
        model = _from_file(path, arch, quick_gelu)
    elif is_mini(source):
        cfg = mini_config(source)
        model = _with_weights(_build(cfg, source), pretrained)
    elif source.replace("/", "-") in open_clip.list_models():
        model = _from_open_clip(source.replace("/", "-"), pretrained, quick_gelu, cache_dir)
    else:
        raise ModelLoadError(
            f"unknown model '{source}': not a directory, a weights file, a mini config "
            "(mini, mini-tiny) or an open_clip architecture (see open_clip.list_models())"
        )
    model = model.to(device).eval()
    return LoadedCLIP(model, model.pixel_transform(), tokenizer_for(model.model_cfg))


def pretrained_mini_locations(name: str = PRETRAINED_MINI) -> list[Path]:
    """Where ``load_clip("mini-clip")`` (or ``"mini-clip-v2"``) looks, in order."""
    cache = Path(os.environ.get("CLIP_BACKDOOR_CACHE") or Path.home() / ".cache" / "clip_backdoor")
    return [
        Path.cwd() / "models" / name,
        _CHECKOUT / "models" / name,
        _CHECKOUT.parent / "shared" / "models" / name,
        cache / "models" / name,
    ]


def find_pretrained_mini(name: str = PRETRAINED_MINI) -> Path:
    for folder in pretrained_mini_locations(name):
        if (folder / CONFIG_FILE).is_file():
            return folder
    places = ", ".join(str(p) for p in pretrained_mini_locations(name))
    recipe = (
        "mini_clip_pretrain" if name == PRETRAINED_MINI else name.replace("-", "_") + "_pretrain"
    )
    raise ModelLoadError(
        f"the pretrained {name} is not in {places}; make it with "
        f"`clip-backdoor pretrain recipes/{recipe}.yaml`"
    )


def tokenizer_for(model_cfg: dict):
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(
            text_cfg["hf_tokenizer_name"], context_length=text_cfg.get("context_length", 77)
        )
    return SimpleTokenizer(context_length=text_cfg.get("context_length", 77))


def _build(model_cfg: dict, name: str, preprocess_cfg: dict | None = None) -> PixelCLIP:
    cfg = {k: v for k, v in model_cfg.items() if k != "custom_text"}
    custom_text = model_cfg.get("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    try:
        clip = (CustomTextCLIP if custom_text else CLIP)(**cfg)
    except TypeError as e:
        raise ModelLoadError(f"invalid model config for '{name}': {e}") from None
    return PixelCLIP(clip, model_cfg, preprocess_cfg, name=name)


def load_weights(
    model: PixelCLIP, state_dict: dict[str, torch.Tensor], source: str, fmt: str = "torch"
) -> None:
    """Strict load that names missing and unexpected keys and shape mismatches in one line.

    TorchScript archives keep every tensor attribute (e.g. attention masks), not only the state
    dict, so for them extra keys are dropped and only missing keys are errors.
    """
    own = model.clip.state_dict()
    if fmt == "torchscript":
        state_dict = {k: v for k, v in state_dict.items() if k in own}
    scale = state_dict.get("logit_scale")
    if scale is not None and "logit_scale" in own and scale.shape != own["logit_scale"].shape:
        state_dict = {**state_dict, "logit_scale": scale.reshape(own["logit_scale"].shape)}
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 8 else ""
                )
                parts.append(f"{label}: {shown}")
        raise ModelLoadError(f"{source} does not fit the architecture: " + "; ".join(parts))
    model.clip.load_state_dict(state_dict, strict=True)


def _from_directory(path: Path) -> PixelCLIP:
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ModelLoadError(f"{path} is not an open_clip model folder: {CONFIG_FILE} missing")
    try:
        config = json.loads(config_path.read_text())
        model_cfg = config["model_cfg"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ModelLoadError(f"{config_path} is not a valid open_clip config ({e})") from None
    weights = [path / WEIGHTS_FILE] if (path / WEIGHTS_FILE).is_file() else []
    weights += sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p not in weights)
    if not weights:
        raise ModelLoadError(f"{path} has a config but no weights file")
    model = _build(model_cfg, path.name, config.get("preprocess_cfg"))
    state_dict, fmt = read_state_dict(weights[0])
    load_weights(model, state_dict, str(weights[0]), fmt)
    model.fewshot_pool = FewShotPool.load(path)
    return model


def _from_file(path: Path, arch: str | dict | None, quick_gelu: bool | None) -> PixelCLIP:
    state_dict, fmt = read_state_dict(path)
    if isinstance(arch, dict):
        cfg, name = arch, path.stem
    elif arch and is_mini(arch):
        cfg, name = mini_config(arch), arch
    elif arch:
        cfg, name = _open_clip_config(arch), arch
    else:
        # OpenAI's TorchScript checkpoints were trained with QuickGELU.
        cfg, name = infer_model_cfg(state_dict, quick_gelu=fmt == "torchscript"), path.stem
    if quick_gelu is not None:
        cfg = {**cfg, "quick_gelu": quick_gelu}
    model = _build(cfg, name)
    load_weights(model, state_dict, str(path), fmt)
    return model


def _open_clip_config(name: str) -> dict:
    cfg = open_clip.get_model_config(name.replace("/", "-"))
    if cfg is None:
        raise ModelLoadError(f"unknown open_clip architecture '{name}'")
    return cfg


def _with_weights(model: PixelCLIP, pretrained) -> PixelCLIP:
    if pretrained is None:
        return model
    if not Path(pretrained).is_file():
        raise ModelLoadError(f"pretrained weights file not found: {pretrained}")
    state_dict, fmt = read_state_dict(pretrained)
    load_weights(model, state_dict, str(pretrained), fmt)
    return model


def _from_open_clip(name: str, pretrained, quick_gelu: bool | None, cache_dir) -> PixelCLIP:
    cfg = _open_clip_config(name)
    if quick_gelu is not None:
        cfg["quick_gelu"] = quick_gelu
    if pretrained is None or Path(str(pretrained)).is_file():
        return _with_weights(_build(cfg, name), pretrained)
    tag = str(pretrained)
    tag_cfg = get_pretrained_cfg(name, tag)
    if not tag_cfg:
        tags = ", ".join(list_pretrained_tags_by_model(name)) or "none"
        raise ModelLoadError(f"'{tag}' is neither a file nor a pretrained tag of {name} ({tags})")
    if tag_cfg.get("quick_gelu") and quick_gelu is None:
        cfg["quick_gelu"] = True  # OpenAI weights were trained with QuickGELU
    try:
        clip = open_clip.create_model(
            name, pretrained=tag, cache_dir=cache_dir, force_quick_gelu=cfg.get("quick_gelu", False)
        )
    except RuntimeError as e:
        raise ModelLoadError(
            f"could not download the weights of {name}/{tag} (offline? set a cache_dir holding "
            f"them or pass a local file): {str(e).splitlines()[0]}"
        ) from None
    return PixelCLIP(clip, cfg, clip.visual.preprocess_cfg, name=f"{name}/{tag}")


def save_clip(
    model: PixelCLIP, path: str | os.PathLike, dtype: torch.dtype | None = None, overwrite=False
) -> Path:
    """Write open_clip's folder layout; readable by ``load_clip`` and ``local-dir:`` alike.

    Written into a temporary folder first and moved into place, so a crash leaves nothing
    half-written. ``dtype`` (e.g. ``torch.float16``) casts floating tensors for shipping.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ModelLoadError(f"{path} exists and is not empty (pass overwrite=True)")
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in model.clip.state_dict().items()
    }
    config = {"model_cfg": model.model_cfg, "preprocess_cfg": model.preprocess_cfg}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if model.fewshot_pool is not None:  # models tuned from it have not seen the pool either
            model.fewshot_pool.save(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; a saved model is for sharing
        for item in staging.iterdir():
            item.chmod(0o644)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path
