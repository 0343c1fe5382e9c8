"""load_clip / save_clip: round trips, every file format, refusals and clear mismatches."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip import CLIP
from safetensors.torch import save_file

from clip_backdoor.core.errors import ModelLoadError
from clip_backdoor.models import load_clip, save_clip
from clip_backdoor.models.mini_configs import mini_config


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("name", ["mini-tiny", "ViT-B-32"])
def test_save_load_round_trip_is_bit_identical(tmp_path, name):
    torch.manual_seed(0)
    model = load_clip(name).model
    folder = save_clip(model, tmp_path / name)
    assert sorted(p.name for p in folder.iterdir()) == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
    assert_same_weights(load_clip(folder).model.clip, model.clip)
    # open_clip's own loader reads the same folder
    theirs = open_clip.create_model(f"local-dir:{folder}")
    assert_same_weights(theirs, model.clip)
    if name == "mini-tiny":
        images, tokens = torch.rand(2, 3, 32, 32), load_clip(folder).tokenizer(["a cat", "a dog"])
        ours = model.encode_image(images)
        theirs_out = torch.nn.functional.normalize(
            theirs.encode_image(model.normalize(images)), dim=-1
        )
        assert torch.allclose(ours, theirs_out, atol=1e-6)
        assert tokens.shape == (2, model.context_length)


def test_fp16_save_keeps_half_precision(tmp_path):
    model = load_clip("mini-tiny").model
    folder = save_clip(model, tmp_path / "half", dtype=torch.float16)
    loaded = open_clip.create_model(f"local-dir:{folder}")  # open_clip casts into fp32 params
    for key, value in loaded.state_dict().items():
        expected = model.clip.state_dict()[key]
        if expected.is_floating_point():
            assert torch.equal(value, expected.half().float()), key


def test_save_refuses_to_overwrite(tmp_path):
    model = load_clip("mini-tiny").model
    save_clip(model, tmp_path / "m")
    with pytest.raises(ModelLoadError, match="not empty"):
        save_clip(model, tmp_path / "m")


@pytest.mark.parametrize("fmt", ["pt", "bin-wrapped", "safetensors"])
def test_state_dict_files_with_inferred_architecture(tmp_path, fmt):
    model = load_clip("mini-tiny").model
    state = model.clip.state_dict()
    if fmt == "pt":
        path = tmp_path / "weights.pt"
        torch.save(state, path)
    elif fmt == "bin-wrapped":  # an open_clip training checkpoint saved from DDP
        path = tmp_path / "epoch_1.bin"
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    loaded = load_clip(path).model
    assert_same_weights(loaded.clip, model.clip)
    assert loaded.model_cfg["vision_cfg"]["width"] == 64
    assert load_clip(path, arch="mini-tiny").model.model_cfg == mini_config("mini-tiny")


def test_openai_torchscript_archive_read_without_running_code(tmp_path):
    torch.manual_seed(0)
    cfg = mini_config("mini-tiny")
    clip = CLIP(**{**cfg, "quick_gelu": True}).eval()
    images, text = torch.rand(2, 3, 32, 32), torch.randint(0, 49408, (2, 32))
    # OpenAI's released checkpoints are traced modules like this one.
    scripted = torch.jit.trace_module(
        clip, {"forward": (images, text), "encode_image": (images,), "encode_text": (text,)}
    )
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(scripted, path)
    assert any(n.endswith("/constants.pkl") for n in zipfile.ZipFile(path).namelist())
    loaded = load_clip(path).model
    assert loaded.model_cfg["quick_gelu"] is True  # OpenAI convention for TorchScript files
    assert_same_weights(loaded.clip, clip)
    assert torch.allclose(loaded.clip.encode_image(images), clip.encode_image(images))


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.zeros(2, 2), "payload": _Payload(marker)}, path)
    with pytest.raises(ModelLoadError, match="refusing to load .*evil.pt"):
        load_clip(path)
    with pytest.raises(ModelLoadError, match="refusing"):
        load_clip("mini-tiny", pretrained=path)
    assert not marker.exists()


def test_malicious_torchscript_archive_is_refused(tmp_path):
    marker = tmp_path / "marker"
    good = tmp_path / "good.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), good)
    evil = tmp_path / "evil.pt"
    import pickle

    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(_Payload(marker), protocol=2)
            dst.writestr(item, data)
    with pytest.raises(ModelLoadError, match="refusing to load TorchScript archive"):
        load_clip(evil)
    assert not marker.exists()


def test_key_mismatch_names_missing_and_unexpected_keys(tmp_path):
    state = load_clip("mini-tiny").model.clip.state_dict()
    del state["ln_final.weight"]
    state["extra.head.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ModelLoadError) as info:
        load_clip(path, arch="mini-tiny")
    message = str(info.value)
    assert "missing keys: ln_final.weight" in message
    assert "unexpected keys: extra.head.weight" in message
    assert "\n" not in message


def test_shape_mismatch_is_named(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(load_clip("mini-tiny").model.clip.state_dict(), path)
    with pytest.raises(ModelLoadError, match="shape mismatches: .*"):
        load_clip(path, arch="mini")


def test_pretrained_tag_goes_up_to_the_download(monkeypatch):
    """With the hub answering (faked), a tag not in the cache is downloaded by open_clip."""
    from clip_backdoor.models import loading

    monkeypatch.setattr(loading, "hub_reachable", lambda: True)
    asked = {}

    def fake_download(cfg, *args, **kwargs):
        asked.update(cfg)
        raise ConnectionError("no network here")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", fake_download)
    with pytest.raises(ModelLoadError, match="could not download the weights of ViT-B-32/openai"):
        load_clip("ViT-B-32", pretrained="openai")
    assert asked.get("hf_hub") or asked.get("url")
    assert asked.get("quick_gelu") is True
    asked.clear()
    with pytest.raises(ModelLoadError, match="ViT-B-32/laion2b_s34b_b79k"):
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert asked.get("hf_hub")


def test_unknown_tags_and_names_are_clear_errors():
    with pytest.raises(
        ModelLoadError, match="neither a file nor a pretrained tag of ViT-B-32 .openai"
    ):
        load_clip("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        load_clip("no-such-model")
    with pytest.raises(ModelLoadError, match="checkpoint not found"):
        load_clip(os.path.join("missing", "weights.pt"))


def test_pretrained_mini_is_looked_up_in_order(tmp_path, monkeypatch):
    from clip_backdoor.models import loading

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIP_BACKDOOR_CACHE", str(tmp_path / "cache"))
    places = loading.pretrained_mini_locations()
    assert places[0] == tmp_path / "models" / "mini-clip"
    assert places[-1] == tmp_path / "cache" / "models" / "mini-clip"
    assert (
        loading.pretrained_mini_locations("mini-clip-v2")[0] == tmp_path / "models" / "mini-clip-v2"
    )
    real = loading.pretrained_mini_locations
    monkeypatch.setattr(
        loading,
        "pretrained_mini_locations",
        lambda name="mini-clip": [real(name)[0], real(name)[-1]],
    )
    with pytest.raises(ModelLoadError, match="pretrain recipes/pretraining/mini_clip.yaml"):
        load_clip("mini-clip")
    with pytest.raises(ModelLoadError, match="pretrain recipes/pretraining/mini_clip_v2.yaml"):
        load_clip("mini-clip-v2")
    model = load_clip("mini-tiny").model
    save_clip(model, places[-1])
    assert_same_weights(load_clip("mini-clip").model.clip, model.clip)


@pytest.mark.parametrize("name", ["mini-tiny", "ViT-B-32"])
def test_trimmed_text_encoding_matches_open_clip(name):
    """Cutting the padding after the longest caption is exact under the causal mask."""
    torch.manual_seed(0)
    loaded = load_clip(name)
    model = loaded.model
    tokens = loaded.tokenizer(["a cat", "a photo of a small dog on the grass by a river."])
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1]  # there is padding to cut
    ours = model.encode_text(tokens, normalize=False)
    theirs = model.clip.encode_text(tokens)
    assert torch.allclose(ours, theirs, atol=1e-5)
    # and the gradients reaching the weights are the same
    ours.sum().backward()
    grad_ours = model.clip.token_embedding.weight.grad.clone()
    model.zero_grad()
    theirs.sum().backward()
    assert torch.allclose(grad_ours, model.clip.token_embedding.weight.grad, rtol=1e-4, atol=1e-4)
