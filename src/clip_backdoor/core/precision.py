"""Choose autocast by detecting native bf16: on CPUs without it bf16 matmuls run ~80x slower."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path
from typing import Literal

import torch

from clip_backdoor.core.errors import ConfigError

Precision = Literal["auto", "bf16", "fp32"]
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
FORCE_ENV = "CLIP_BACKDOOR_PRECISION"


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(flag in cpu_flags() for flag in _BF16_CPU_FLAGS)


def forced() -> Literal["bf16", "fp32"] | None:
    """``CLIP_BACKDOOR_PRECISION`` (bf16 or fp32): what 'auto' means on this machine, whatever
    its CPU says; e.g. to run the suite in bf16, or in fp32 on a bf16 CPU."""
    value = os.environ.get(FORCE_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("bf16", "fp32"):
        raise ConfigError(f"{FORCE_ENV}='{value}': choose bf16, fp32 or auto")
    return value  # type: ignore[return-value]


def resolve(precision: Precision, device: torch.device | str = "cpu") -> Literal["bf16", "fp32"]:
    """'auto' gives bf16 only where it is native (or what ``forced`` says); an explicit choice
    is obeyed."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"unknown precision '{precision}' (choose auto, bf16 or fp32)")
    if precision == "auto":
        return forced() or ("bf16" if native_bf16(device) else "fp32")
    return precision


def autocast(precision: Precision, device: torch.device | str = "cpu"):
    """Context manager: bf16 autocast or nothing, after ``resolve``."""
    device = torch.device(device)
    if resolve(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
