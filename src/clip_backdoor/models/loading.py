"""``load_clip`` / ``save_clip``: every way a CLIP reaches the toolkit, one return type.

Sources, tried in this order:
1. a directory in open_clip's layout (``open_clip_config.json`` + weights), or one written by
   Hugging Face ``transformers`` (``config.json`` of a CLIPModel or SiglipModel, or of one half);
   ``hf-hub:ORG/NAME``: such a directory on the Hugging Face hub (the cache first; the network
   only if it answers);
2. a weights file (``.safetensors``, ``.pt``/``.bin``/``.pth`` state dict, OpenAI TorchScript
   archive), with the architecture given by ``arch`` or inferred from the tensor shapes;
3. "mini-clip": the project's pretrained mini-CLIP (``models/mini-clip`` in the working
   directory, then the model roots of ``core.settings``, then the user cache); or a mini config
   name ("mini",
   "mini-tiny"), randomly initialised unless ``pretrained`` is a file;
4. an open_clip architecture name, with ``pretrained`` a tag (the cache first, else a download)
   or a file; untrained, it keeps its family's preprocessing (that of its first pretrained tag).

Each model carries its family's own tokenizer (``model.tokenizer``); ``tokenizer`` overrides a
Hugging Face one by a local folder or hub name (``models/tokenizers.py``).
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

from clip_backdoor.core.errors import ModelLoadError, first_line
from clip_backdoor.core.settings import model_roots
from clip_backdoor.data.fewshot_pool import FewShotPool
from clip_backdoor.models.architecture import infer_model_cfg
from clip_backdoor.models.families import (
    is_tiny,
    tiny_open_clip_config,
    tiny_transformers_model,
)
from clip_backdoor.models.mini_configs import is_mini, mini_config
from clip_backdoor.models.pixel_clip import PixelCLIP
from clip_backdoor.models.safe_checkpoint import read_state_dict
from clip_backdoor.models.tokenizers import hub_reachable, open_clip_hf_tokenizer
from clip_backdoor.models.transformers_clip import (
    describe,
    is_transformers_folder,
    load_transformers_model,
    save_transformers,
)

PRETRAINED_MINI = (
    "mini-clip"  # the project's pretrained mini-CLIP (recipes/pretraining/mini_clip.yaml)
)
# The committed measuring models, by name: v1 (label-aware, every train image) and v2 (web-like
# captions, a held-out few-shot pool; recipes/pretraining/mini_clip_v2.yaml).
PRETRAINED_MINIS = (PRETRAINED_MINI, "mini-clip-v2")
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
HUB_PREFIX = "hf-hub:"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class LoadedCLIP(NamedTuple):
    model: PixelCLIP
    preprocess: object  # PIL image -> tensor in [0, 1]
    tokenizer: object  # list[str] -> LongTensor (B, context_length)


def load_model_spec(spec, device: str | torch.device = "cpu") -> LoadedCLIP:
    """A recipe's ``model:`` (``config_base.ModelSpec``) loaded with everything it names (the
    tokenizer too): every stage that reloads the recipe's clean model goes through here."""
    return load_clip(
        spec.name, spec.pretrained, arch=spec.arch, device=device, tokenizer=spec.tokenizer
    )


def load_clip(
    source: str | os.PathLike,
    pretrained: str | os.PathLike | None = None,
    *,
    arch: str | dict | None = None,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    tokenizer: str | None = None,
) -> LoadedCLIP:
    """Load a CLIP as a pixel-space model plus its preprocess and tokenizer (see module doc)."""
    source = str(source)
    if source in PRETRAINED_MINIS and not Path(source).is_dir():
        source = str(find_pretrained_mini(source))
    path = Path(source).expanduser()
    folder = None
    if source.startswith(HUB_PREFIX):
        folder = hub_folder(source[len(HUB_PREFIX) :], cache_dir)
        model = _from_folder(folder)
        model.name = source
    elif path.is_dir():
        folder = path
        model = _from_folder(path)
    elif path.suffix in WEIGHT_SUFFIXES or path.is_file():
        model = _from_file(path, arch, quick_gelu)
    elif is_mini(source):
        cfg = mini_config(source)
        model = _with_weights(_build(cfg, source), pretrained)
    elif is_tiny(source):
        model = _with_weights(_tiny(source), pretrained)
    elif source.replace("/", "-") in open_clip.list_models():
        model = _from_open_clip(source.replace("/", "-"), pretrained, quick_gelu, cache_dir)
    else:
        raise ModelLoadError(
            f"unknown model '{source}': not a directory, a weights file, an hf-hub: name, a mini "
            "config (mini, mini-tiny) or an open_clip architecture (see open_clip.list_models())"
        )
    has_text = getattr(model.clip, "text", True) is not None  # a transformers vision half has none
    if has_text and (model.tokenizer is None or tokenizer):
        model.tokenizer = tokenizer_for(model.model_cfg, folder, tokenizer, model.name)
    model = model.to(device).eval()
    return LoadedCLIP(model, model.pixel_transform(), model.tokenizer)


def pretrained_mini_locations(name: str = PRETRAINED_MINI) -> list[Path]:
    """Where ``load_clip("mini-clip")`` (or ``"mini-clip-v2"``) looks, in order."""
    cache = Path(os.environ.get("CLIP_BACKDOOR_CACHE") or Path.home() / ".cache" / "clip_backdoor")
    return [Path.cwd() / "models" / name, *(root / name for root in model_roots())] + [
        cache / "models" / name
    ]


def find_pretrained_mini(name: str = PRETRAINED_MINI) -> Path:
    for folder in pretrained_mini_locations(name):
        if (folder / CONFIG_FILE).is_file():
            return folder
    places = ", ".join(str(p) for p in pretrained_mini_locations(name))
    raise ModelLoadError(
        f"the pretrained {name} is not in {places}; make it with "
        f"`clip-backdoor pretrain recipes/pretraining/{name.replace('-', '_')}.yaml`"
    )


def tokenizer_for(
    model_cfg: dict,
    folder: Path | None = None,
    override: str | None = None,
    what: str = "the model",
):
    """The family's tokenizer: open_clip's BPE, or the Hugging Face one its config names (found
    in ``override``, the model's folder, the cache or, if it answers, the hub)."""
    text_cfg = model_cfg.get("text_cfg", {})
    if str(model_cfg.get("family", "")).startswith("transformers"):
        from clip_backdoor.models.tokenizers import (
            HOW_TO_GIVE,
            TransformersTokenizer,
            auto_tokenizer,
            has_tokenizer_files,
        )

        if not override and not (folder is not None and has_tokenizer_files(folder)):
            raise ModelLoadError(f"{what} has no tokenizer files; {HOW_TO_GIVE}")
        source = override or folder
        return TransformersTokenizer(auto_tokenizer(source, what), text_cfg["context_length"])
    if text_cfg.get("hf_tokenizer_name") or (override and text_cfg):
        text_cfg = {"hf_tokenizer_name": override, **text_cfg} if override else text_cfg
        return open_clip_hf_tokenizer(text_cfg, folder, override, what)
    return SimpleTokenizer(context_length=text_cfg.get("context_length", 77))


def hub_folder(repo_id: str, cache_dir: str | None = None) -> Path:
    """The local snapshot of a hub repository: from the cache, else downloaded if the hub
    answers, else one line saying what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError

    patterns = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "*.gz"]
    try:
        return Path(
            snapshot_download(
                repo_id, cache_dir=cache_dir, local_files_only=True, allow_patterns=patterns
            )
        )
    except HFValidationError as e:
        raise ModelLoadError(f"'hf-hub:{repo_id}' is not a hub name ({e})") from None
    except Exception:  # not cached (huggingface_hub raises several kinds)
        pass
    if not hub_reachable():
        raise ModelLoadError(
            f"hf-hub:{repo_id} is not in the Hugging Face cache and the hub cannot be reached "
            "(it needs the network once): download it where there is network "
            f"(`huggingface-cli download {repo_id}`) and give its folder as the model, or set "
            "HF_HOME to a cache that holds it"
        )
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as e:
        raise ModelLoadError(f"could not download hf-hub:{repo_id}: {first_line(e)}") from None


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


def _from_folder(path: Path) -> PixelCLIP:
    if (path / CONFIG_FILE).is_file():
        return _from_directory(path)
    if is_transformers_folder(path):
        return _from_transformers(path)
    raise ModelLoadError(
        f"{path} is neither an open_clip model folder ({CONFIG_FILE}) nor a Hugging Face "
        "transformers one (config.json with a model_type)"
    )


def _from_transformers(path: Path) -> PixelCLIP:
    clip, model_cfg, preprocess_cfg = load_transformers_model(path)
    model = PixelCLIP(clip, model_cfg, preprocess_cfg, name=path.name)
    model.fewshot_pool = FewShotPool.load(path)
    return model


def _tiny(name: str) -> PixelCLIP:
    if name.startswith(("tiny-hf", "hf-")):
        from clip_backdoor.models.tokenizers import TransformersTokenizer, auto_tokenizer

        hf_model, tokenizer_folder = tiny_transformers_model(name)
        clip, model_cfg, preprocess_cfg = describe(hf_model)
        model = PixelCLIP(clip, model_cfg, preprocess_cfg, name=name)
        context = model_cfg["text_cfg"]["context_length"]
        model.tokenizer = TransformersTokenizer(auto_tokenizer(tokenizer_folder, name), context)
        return model
    model_cfg, preprocess_cfg = tiny_open_clip_config(name)
    return _build(model_cfg, name, preprocess_cfg)


def _from_directory(path: Path) -> PixelCLIP:
    config_path = path / CONFIG_FILE
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


def family_preprocess(name: str, tag: str | None = None) -> dict | None:
    """mean/std, interpolation and resize mode of an open_clip architecture: its tag's, or (an
    untrained one) those of its first pretrained tag, so a SigLIP stays a SigLIP."""
    tags = list_pretrained_tags_by_model(name)
    tag = tag if tag in tags else (tags[0] if tags else None)
    cfg = get_pretrained_cfg(name, tag) if tag else {}
    keys = ("mean", "std", "interpolation", "resize_mode")
    found = {k: list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k] for k in keys if k in cfg}
    return found or None


def _from_open_clip(name: str, pretrained, quick_gelu: bool | None, cache_dir) -> PixelCLIP:
    cfg = _open_clip_config(name)
    if quick_gelu is not None:
        cfg["quick_gelu"] = quick_gelu
    if pretrained is None or Path(str(pretrained)).is_file():
        return _with_weights(_build(cfg, name, family_preprocess(name)), pretrained)
    tag = str(pretrained)
    tag_cfg = get_pretrained_cfg(name, tag)
    if not tag_cfg:
        tags = ", ".join(list_pretrained_tags_by_model(name)) or "none"
        raise ModelLoadError(f"'{tag}' is neither a file nor a pretrained tag of {name} ({tags})")
    if tag_cfg.get("quick_gelu") and quick_gelu is None:
        cfg["quick_gelu"] = True  # OpenAI weights were trained with QuickGELU
    preprocess = family_preprocess(name, tag)
    cached = _cached_tag_weights(tag_cfg, cache_dir)
    if cached is not None:
        model = _build(cfg, f"{name}/{tag}", preprocess)
        state_dict, fmt = read_state_dict(cached)
        load_weights(model, state_dict, str(cached), fmt)
        return model
    if not hub_reachable():
        raise ModelLoadError(
            f"the weights of {name}/{tag} are not in the Hugging Face cache and the hub cannot "
            "be reached (they need the network once): pass a local weights file as the "
            "pretrained value, or set HF_HOME to a cache that holds them"
        )
    try:
        clip = open_clip.create_model(
            name, pretrained=tag, cache_dir=cache_dir, force_quick_gelu=cfg.get("quick_gelu", False)
        )
    except RuntimeError as e:
        raise ModelLoadError(
            f"could not download the weights of {name}/{tag}: {first_line(e)}"
        ) from None
    return PixelCLIP(clip, cfg, preprocess or clip.visual.preprocess_cfg, name=f"{name}/{tag}")


def _cached_tag_weights(tag_cfg: dict, cache_dir: str | None) -> Path | None:
    """The weights file of a pretrained tag if the Hugging Face cache holds it."""
    repo = (tag_cfg.get("hf_hub") or "").strip("/")
    if not repo:
        return None
    from huggingface_hub import hf_hub_download

    names = [tag_cfg["file"]] if tag_cfg.get("file") else list(HUB_WEIGHTS)
    for filename in names:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=True))
        except Exception:  # not cached
            continue
    return None


def save_clip(
    model: PixelCLIP, path: str | os.PathLike, dtype: torch.dtype | None = None, overwrite=False
) -> Path:
    """Write the model in its own format, readable by ``load_clip``:

    - open_clip families: open_clip's folder layout (``local-dir:`` loads it too), with a Hugging
      Face tokenizer's files beside the weights (open_clip's convention: the folder is all a
      SigLIP needs offline);
    - transformers checkpoints: ``save_pretrained`` of the model, its image processor settings
      and its tokenizer (what transformers' ``from_pretrained`` reads).

    Written into a temporary folder first and moved into place, so a crash leaves nothing
    half-written. ``dtype`` (e.g. ``torch.float16``) casts floating tensors for shipping.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ModelLoadError(f"{path} exists and is not empty (pass overwrite=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if hasattr(model.clip, "hf"):
            _write_transformers(model, staging, dtype)
        else:
            _write_open_clip(model, staging, dtype)
        if model.tokenizer is not None and hasattr(model.tokenizer, "save_pretrained"):
            model.tokenizer.save_pretrained(staging)
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


def _write_open_clip(model: PixelCLIP, folder: Path, dtype: torch.dtype | None) -> None:
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in model.clip.state_dict().items()
    }
    config = {"model_cfg": model.model_cfg, "preprocess_cfg": model.preprocess_cfg}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _write_transformers(model: PixelCLIP, folder: Path, dtype: torch.dtype | None) -> None:
    hf = model.clip.hf
    original = next(hf.parameters()).dtype
    if dtype is not None:
        hf.to(dtype)
    try:
        save_transformers(model.clip, folder, model.preprocess_cfg)
    finally:
        hf.to(original)
