"""'auto' picks bf16 only where the CPU has it natively; an explicit choice is obeyed."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"avx2", "fma"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16")],
)
def test_auto_follows_the_cpu_flags(flags, expected, monkeypatch):
    import clip_backdoor.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.resolve("auto", "cpu") == expected
    assert precision.resolve("fp32", "cpu") == "fp32" and precision.resolve("bf16") == "bf16"
    autocast = precision.autocast("auto", "cpu")
    assert isinstance(autocast, torch.autocast) == (expected == "bf16")


def test_an_unknown_precision_is_one_line():
    from clip_backdoor.errors import ConfigError
    from clip_backdoor.precision import resolve

    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        resolve("fp8")
