"""Read model weights from files without executing anything stored in them.

Why: a ``.pt`` file is a pickle, and unpickling can run arbitrary code; a CLIP checkpoint bought
or downloaded from a stranger is exactly the threat this toolkit studies. Formats:

- ``.safetensors``: raw tensors, safe by construction.
- ``.pt``/``.bin``/``.pth`` state dicts: ``torch.load(weights_only=True)``, which refuses any
  pickled object other than tensors and plain containers.
- OpenAI's released checkpoints are TorchScript archives (``torch.jit.save``). ``torch.jit.load``
  would compile and run the archive's code, so we read only its ``data.pkl`` with a restricted
  unpickler that accepts TorchScript module records, tensors and storages, and nothing else.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from clip_backdoor.core.errors import ModelLoadError

# Non-tensor entries of OpenAI checkpoints that are not model parameters.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Return (state dict, format) with format one of safetensors, torch, torchscript."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path)), "safetensors"
        except Exception as e:  # safetensors raises its own error types
            raise ModelLoadError(f"cannot read {path} as safetensors: {e}") from None
    if is_torchscript_archive(path):
        return _clean(read_torchscript_weights(path)), "torchscript"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"refusing to load {path}: it contains pickled Python objects other than tensors, "
            f"and unpickling them could execute code ({first}); re-save it as a state dict "
            "or safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ModelLoadError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    return _clean(_unwrap(payload, path)), "torch"


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _unwrap(payload: Any, path: Path) -> dict:
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict):
        raise ModelLoadError(f"{path} holds a {type(payload).__name__}, not a state dict")
    return payload


def _clean(state_dict: dict) -> dict[str, torch.Tensor]:
    """Drop DDP's ``module.`` prefix and OpenAI's non-parameter entries."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key in OPENAI_EXTRA_KEYS or not isinstance(value, torch.Tensor):
            continue
        out[key] = value
    return out


class _ScriptModuleRecord:
    """Stands in for a TorchScript class: keeps the attributes, runs nothing."""

    def __init__(self, *args: Any) -> None:
        self.attributes: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attributes = dict(state) if isinstance(state, dict) else {}


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, *_ignored):
    return storage.as_strided(size, stride, offset).clone()


def _identity(value, *_ignored):
    return value


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__."):
            return _ScriptModuleRecord
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
            self.storages[key] = torch.frombuffer(raw, dtype=dtype, count=numel)
        return self.storages[key]


def read_torchscript_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensor attributes of a TorchScript archive, named as ``state_dict()`` would name them."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        data_pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        prefix = data_pkl.rsplit("/", 1)[0]
        with archive.open(data_pkl) as handle:
            try:
                root = _RestrictedUnpickler(handle, archive, prefix).load()
            except pickle.UnpicklingError as e:
                raise ModelLoadError(f"refusing to load TorchScript archive {path}: {e}") from None
    if not isinstance(root, _ScriptModuleRecord):
        raise ModelLoadError(f"{path} is a TorchScript archive without a module")
    state: dict[str, torch.Tensor] = {}
    _collect(root, "", state)
    return state


def _collect(record: _ScriptModuleRecord, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for name, value in record.attributes.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptModuleRecord):
            _collect(value, f"{prefix}{name}.", out)
