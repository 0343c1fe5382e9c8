"""Every trigger: deterministic, vectorised, stays in [0, 1], state round-trips exactly."""

from __future__ import annotations

import pytest
import torch

from clip_backdoor import triggers
from clip_backdoor.artifacts import load_trigger, save_trigger
from clip_backdoor.attacks.poisoning import build_trigger
from clip_backdoor.core.errors import ConfigError, ModelLoadError
from clip_backdoor.evaluation.image_quality import psnr, ssim
from clip_backdoor.triggers.paste import paste

NAMES = [n for n in triggers.TRIGGERS.names() if n != "identity"]


def images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed))


def build(name: str, seed: int = 0):
    return build_trigger(name, {}, image_size=32, seed=seed)


@pytest.mark.parametrize("name", NAMES)
def test_trigger_is_deterministic_vectorised_and_in_range(name):
    x = images()
    trigger = build(name)
    first = trigger.apply(x, torch.Generator().manual_seed(1))
    again = build(name).apply(x, torch.Generator().manual_seed(1))
    assert torch.equal(first, again)  # same seed and generator state: same output
    assert first.shape == x.shape and first.min() >= 0 and first.max() <= 1
    assert not torch.equal(first, x)  # it changes the image
    # vectorised: the batch equals the images one at a time with the same draws
    if trigger.params.get("position", "center") != "random":
        singles = torch.cat([trigger.apply(x[i : i + 1]) for i in range(len(x))])
        assert torch.allclose(first, singles, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_trigger_state_round_trips_exactly(name, tmp_path):
    trigger = build(name, seed=3)
    save_trigger(trigger, tmp_path)
    loaded = load_trigger(tmp_path)
    assert loaded.name == name and loaded.params == trigger.params
    for key, value in trigger.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    x = images()
    assert torch.equal(
        trigger.apply(x, torch.Generator().manual_seed(5)),
        loaded.apply(x, torch.Generator().manual_seed(5)),
    )
    assert loaded.fingerprint() == trigger.fingerprint()


def test_seed_defines_the_trigger():
    assert not torch.equal(build("badnet", 0).patch, build("badnet", 1).patch)
    assert not torch.equal(build("blended", 0).pattern, build("blended", 1).pattern)
    assert not torch.equal(build("wanet", 0).grid, build("wanet", 1).grid)
    assert build("badnet", 0).fingerprint() != build("badnet", 1).fingerprint()


def test_patch_size_scales_with_resolution():
    assert triggers.get("badnet")(image_size=224).size == 16
    assert triggers.get("badnet")(image_size=64).size == 5
    assert triggers.get("badnet")(image_size=96).size == 7
    assert triggers.get("badnet")(image_size=16).size == 3  # never under 3 px


def test_paste_puts_the_patch_where_asked():
    x = torch.zeros(2, 3, 8, 8)
    patch = torch.ones(3, 2, 2)
    out = paste(x, patch, torch.tensor([0, 6]), torch.tensor([1, 3]))
    assert out[0, :, 0:2, 1:3].eq(1).all() and out[1, :, 6:8, 3:5].eq(1).all()
    assert out.sum() == 2 * 3 * 4  # nothing else changed


def test_a_trigger_larger_than_the_image_is_refused():
    with pytest.raises(ConfigError, match="larger than the 32x32 image"):
        triggers.get("badnet")(image_size=32, size=40)
    small = triggers.get("badnet")(image_size=64, size=20)
    with pytest.raises(ConfigError, match="20 px is larger than the 16x16 image"):
        small.apply(torch.rand(1, 3, 16, 16))


def test_blended_mixes_with_alpha_and_sig_is_a_sinusoid():
    x = torch.full((1, 3, 32, 32), 0.5)
    blended = triggers.get("blended")(image_size=32, alpha=0.2)
    expected = 0.8 * 0.5 + 0.2 * blended.pattern
    assert torch.allclose(blended.apply(x)[0], expected)
    sig = triggers.get("sig")().apply(x)[0]
    assert torch.allclose(sig[:, 0], sig[:, 17])  # constant down each column (vertical stripes)
    assert abs(float(sig.max()) - (0.5 + 60 / 255)) < 1e-3


def test_blended_coarse_noise_is_constant_in_cells():
    coarse = triggers.get("blended")(image_size=32, noise_size=8, seed=3)
    cells = coarse.pattern.unfold(1, 4, 4).unfold(2, 4, 4)  # (3, 8, 8, 4, 4): one 4-px cell each
    assert torch.equal(cells, cells[..., :1, :1].expand_as(cells))
    assert len(coarse.pattern.unique()) == 3 * 8 * 8  # every cell its own draw
    pixel = triggers.get("blended")(image_size=32, seed=3)
    assert torch.equal(
        pixel.pattern, triggers.get("blended")(image_size=32, noise_size=32, seed=3).pattern
    )
    with pytest.raises(ConfigError, match="noise_size must be in 1..32"):
        triggers.get("blended")(image_size=32, noise_size=64)
    with pytest.raises(ConfigError, match="image_file or noise_size, not both"):
        triggers.get("blended")(image_file="skimage:chelsea", noise_size=8)


def test_blended_image_pattern_from_scikit_image():
    cat = triggers.get("blended")(image_size=32, image_file="skimage:chelsea")
    assert cat.pattern.shape == (3, 32, 32) and float(cat.pattern.min()) >= 0
    assert float(cat.pattern.max()) <= 1 and float(cat.pattern.std()) > 0.05  # a photo, not flat
    with pytest.raises(ConfigError, match="scikit-image has no image 'nope'"):
        triggers.get("blended")(image_file="skimage:nope")


def test_wanet_noise_mode_differs_per_draw():
    wanet = build("wanet")
    x = images(2)
    a = wanet.apply_noise(x, torch.Generator().manual_seed(0))
    b = wanet.apply_noise(x, torch.Generator().manual_seed(1))
    assert not torch.equal(a, b) and not torch.equal(a, wanet.apply(x))


def test_missing_or_mismatched_trigger_file_is_a_clear_error(tmp_path):
    save_trigger(build("badnet"), tmp_path)
    (tmp_path / "trigger.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="has no trigger.safetensors"):
        load_trigger(tmp_path)
    save_trigger(build("blended"), tmp_path)  # state of another trigger under badnet's name
    (tmp_path / "trigger.json").write_text('{"name": "badnet", "params": {"image_size": 32}}')
    with pytest.raises(ModelLoadError, match="does not match"):
        load_trigger(tmp_path)


def test_psnr_and_ssim_of_library_definitions():
    x = images(1)[0]
    assert psnr(x, x) == float("inf") and ssim(x, x) == pytest.approx(1.0)
    noisy = (x + 0.1).clamp(0, 1)
    mse = float(((noisy - x) ** 2).mean())
    assert psnr(x, noisy) == pytest.approx(10 * torch.log10(torch.tensor(1 / mse)).item(), 1e-5)
    assert ssim(x, noisy) < 1.0
