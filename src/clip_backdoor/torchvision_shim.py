"""Make ``import torchvision`` work beside a torch build it was not compiled for.

Why: open_clip imports torchvision (it only needs its Python image transforms). PyPI's
torchvision wheel is built against the CUDA torch; next to the CPU-only ``torch==2.13.0`` its
compiled extension ``torchvision/_C.so`` cannot load, so the operators ``torchvision::nms`` and
``torchvision::qnms`` are never registered, and ``torchvision/_meta_registrations.py`` fails at
import with "operator torchvision::nms does not exist".

What: before torchvision is first imported, try to load its compiled extension exactly as
torchvision would. If that works (a normal install), do nothing. If it fails, define the two
operator schemas with ``torch.library`` and give them kernels that raise a clear error, so the
import succeeds; box ops (NMS) are then unavailable, which clip-backdoor never uses.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Literal

import torch

State = Literal["absent", "native", "patched", "already-imported"]

_MISSING_OPS = ("nms", "qnms")
_library: torch.library.Library | None = None  # kept alive: dropping it unregisters the ops
state: State | None = None


def _extension_path() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return None
    candidates = sorted(Path(spec.origin).parent.glob("_C*.so")) + sorted(
        Path(spec.origin).parent.glob("_C*.pyd")
    )
    return candidates[0] if candidates else None


def _extension_loads(path: Path) -> bool:
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError):
        return False
    return True


def _unavailable(*_args, **_kwargs):
    raise RuntimeError(
        "torchvision's compiled operators are unavailable with this torch build "
        "(see clip_backdoor.torchvision_shim); install a matching torch/torchvision pair"
    )


def _define_missing_ops() -> None:
    global _library
    _library = torch.library.Library("torchvision", "DEF")
    for name in _MISSING_OPS:
        _library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _library.impl(name, _unavailable, "CompositeExplicitAutograd")


def install() -> State:
    """Run once, before the first ``import torchvision``; return what was done."""
    global state
    if state is not None:
        return state
    if "torchvision" in sys.modules:
        state = "already-imported"
    else:
        path = _extension_path()
        if importlib.util.find_spec("torchvision") is None:
            state = "absent"
        elif path is not None and _extension_loads(path):
            state = "native"
        else:
            _define_missing_ops()
            state = "patched"
    return state
