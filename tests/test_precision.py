"""'auto' picks bf16 only where the CPU has it natively; an explicit choice is obeyed."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"avx2", "fma"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16")],
)
def test_auto_follows_the_cpu_flags(flags, expected, monkeypatch):
    import clip_backdoor.core.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.delenv(precision.FORCE_ENV, raising=False)
    assert precision.resolve("auto", "cpu") == expected
    assert precision.resolve("fp32", "cpu") == "fp32" and precision.resolve("bf16") == "bf16"
    autocast = precision.autocast("auto", "cpu")
    assert isinstance(autocast, torch.autocast) == (expected == "bf16")


def test_an_unknown_precision_is_one_line():
    from clip_backdoor.core.errors import ConfigError
    from clip_backdoor.core.precision import resolve

    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        resolve("fp8")


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
def test_the_environment_forces_what_auto_means_on_any_cpu(forced, monkeypatch):
    import clip_backdoor.core.precision as precision
    from clip_backdoor.core.errors import ConfigError

    monkeypatch.setenv(precision.FORCE_ENV, forced)
    for flags in ({"avx2"}, {"avx512_bf16"}, {"amx_bf16"}):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert precision.resolve("auto") == forced
        assert precision.resolve("fp32") == "fp32"  # an explicit choice still wins
    monkeypatch.setenv(precision.FORCE_ENV, "fp16")
    with pytest.raises(ConfigError, match="CLIP_BACKDOOR_PRECISION='fp16'"):
        precision.resolve("auto")
