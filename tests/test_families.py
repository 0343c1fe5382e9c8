"""CLIP families: transformers checkpoints, hf-hub names, tokenizers, objectives, bad input."""

from __future__ import annotations

import json
import time

import open_clip
import pytest
import torch
import transformers
from open_clip.loss import SigLipLoss

from clip_backdoor.cli import main
from clip_backdoor.core.errors import ModelLoadError
from clip_backdoor.engine.loss import clip_loss, pair_loss, sigmoid_loss
from clip_backdoor.models import load_clip, save_clip
from clip_backdoor.models.families import tiny_transformers_model

CAPTION = "A photo of a Goldfish, swimming!"


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A transformers CLIPModel and SiglipModel built small and saved with save_pretrained, with
    their tokenizers and image processors, as a user's download would be."""
    folders = {}
    root = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIP_BACKDOOR_CACHE", str(root / "cache"))
        for name in ("tiny-hf-clip", "tiny-hf-siglip"):
            torch.manual_seed(0)
            model, tokenizer_folder = tiny_transformers_model(name)
            with torch.no_grad():  # SigLIP initialises scale and bias to 0: make them matter
                model.logit_scale.fill_(2.3)
                if hasattr(model, "logit_bias"):
                    model.logit_bias.fill_(-4.0)
            folder = root / name
            model.save_pretrained(folder)
            transformers.AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(folder)
            processor = (
                transformers.CLIPImageProcessor(
                    size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                )
                if name == "tiny-hf-clip"
                else transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
            )
            processor.save_pretrained(folder)
            folders[name] = (folder, model)
    return folders


@pytest.mark.parametrize("name", ["tiny-hf-clip", "tiny-hf-siglip"])
def test_transformers_checkpoints_equal_their_own_forward(hf_folders, name):
    folder, reference = hf_folders[name]
    loaded = load_clip(folder)
    model = loaded.model
    assert model.family == ("transformers CLIP" if name.endswith("clip") else "transformers SigLIP")
    expected = {
        "tiny-hf-clip": ([0.48145466, 0.4578275, 0.40821073], "shortest", "infonce"),
        "tiny-hf-siglip": ([0.5, 0.5, 0.5], "squash", "sigmoid"),
    }[name]
    assert model.preprocess_cfg["mean"] == pytest.approx(expected[0])
    assert (model.preprocess_cfg["resize_mode"], model.objective) == expected[1:]
    assert model.preprocess_cfg["source"] == "preprocessor_config.json"
    torch.manual_seed(1)
    images = torch.rand(3, 3, 32, 32)
    captions = ["a red circle", CAPTION, "two zebras"]
    own_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokens = own_tokenizer(captions, padding="max_length", max_length=16, return_tensors="pt")
    assert torch.equal(loaded.tokenizer(captions), tokens.input_ids)
    with torch.no_grad():
        theirs = reference(input_ids=tokens.input_ids, pixel_values=model.normalize(images))
        image_features = model.encode_image(images)
        text_features = model.encode_text(loaded.tokenizer(captions))
    torch.testing.assert_close(image_features, theirs.image_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(text_features, theirs.text_embeds, atol=1e-5, rtol=0)
    logits = model.logit_scale.exp() * image_features @ text_features.T
    if model.logit_bias is not None:
        logits = logits + model.logit_bias
    torch.testing.assert_close(logits, theirs.logits_per_image, atol=1e-4, rtol=0)
    # saving keeps the format: a transformers folder that transformers itself reads
    saved = save_clip(model, folder.parent / f"{name}-saved")
    assert (saved / "config.json").is_file() and (saved / "preprocessor_config.json").is_file()
    again = type(reference).from_pretrained(saved)
    for key, value in reference.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert load_clip(saved).model.preprocess_cfg["mean"] == pytest.approx(expected[0])


def test_a_transformers_vision_half_encodes_images_and_says_it_has_no_text(hf_folders, tmp_path):
    folder, reference = hf_folders["tiny-hf-clip"]
    config = reference.config.vision_config.to_dict()
    config["projection_dim"] = reference.config.projection_dim
    half = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**config))
    half.vision_model.load_state_dict(reference.vision_model.state_dict())
    half.visual_projection.load_state_dict(reference.visual_projection.state_dict())
    half.save_pretrained(tmp_path / "vision")
    model = load_clip(tmp_path / "vision").model
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.get_image_features(pixel_values=model.normalize(images)).pooler_output
        torch.testing.assert_close(
            model.encode_image(images), torch.nn.functional.normalize(expected, dim=-1)
        )
    assert model.tokenizer is None
    with pytest.raises(ModelLoadError, match="no text tower"):
        model.encode_text(torch.zeros(1, 16, dtype=torch.long))


@pytest.mark.parametrize("name", ["tiny-siglip", "tiny-siglip2", "tiny-vit", "tiny-hf-clip"])
def test_each_tokenizer_round_trips_a_caption_as_the_family_does(tmp_path, name):
    loaded = load_clip(name)
    ids = loaded.tokenizer([CAPTION])
    assert ids.shape == (1, loaded.model.context_length)
    if name.startswith("tiny-hf"):
        own = transformers.AutoTokenizer.from_pretrained(save_clip(loaded.model, tmp_path / "m"))
        theirs = own([CAPTION], padding="max_length", max_length=16, return_tensors="pt")
        assert torch.equal(ids, theirs.input_ids)
        # the BPE built here is OpenAI's: open_clip's tokenizer gives the same ids to the end
        simple = open_clip.tokenizer.SimpleTokenizer(context_length=16)([CAPTION])
        end = int((simple[0] == 49407).nonzero()[0]) + 1
        assert torch.equal(ids[0, :end], simple[0, :end])
        text = own.decode(ids[0], skip_special_tokens=True)
        bpe = open_clip.tokenizer.SimpleTokenizer()
        assert text == bpe.decode(ids[0, 1 : end - 1].tolist()).strip()  # CLIP spaces "," too
        assert text.replace(" ", "") == CAPTION.lower().replace(" ", "")
        return
    # the family's own: open_clip's tokenizer of the saved folder (local-dir:)
    own = open_clip.get_tokenizer(f"local-dir:{save_clip(loaded.model, tmp_path / 'm')}")
    assert torch.equal(ids, own([CAPTION]))
    if name.startswith("tiny-siglip"):  # canonicalised: lower case, no punctuation
        text = own.tokenizer.decode(ids[0], skip_special_tokens=True)
        assert text == "a photo of a goldfish swimming"


def test_sigmoid_loss_is_siglips_and_label_aware_targets_extend_it():
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale, bias = torch.tensor(2.3), torch.tensor(-3.0)
    expected = SigLipLoss()(image, text, scale.exp(), bias)
    torch.testing.assert_close(sigmoid_loss(image, text, scale, bias), expected)
    torch.testing.assert_close(sigmoid_loss(image, text, scale, bias, torch.arange(6)), expected)
    # two pairs of one group: their cross pairs become positives, so the loss changes
    assert sigmoid_loss(image, text, scale, bias, torch.tensor([0, 0, 1, 2, 3, 4])) != expected
    torch.testing.assert_close(
        pair_loss("infonce", image, text, scale, None, None), clip_loss(image, text, scale)
    )


@pytest.mark.parametrize("name", ["tiny-siglip", "tiny-hf-siglip", "tiny-vit"])
def test_a_training_step_lowers_the_models_own_objective(name):
    """Poisoning, FT and CleanCLIP train through the engine's objective: the model's own loss
    (SigLIP: sigmoid with its bias, which moves too; CLIP: InfoNCE)."""
    from clip_backdoor.engine.config import TrainingSpec
    from clip_backdoor.engine.trainer import clip_objective

    torch.manual_seed(0)
    model = load_clip(name).model.train()
    images = torch.rand(8, 3, model.image_size, model.image_size)
    tokens = model.tokenizer([f"a photo of thing {i}" for i in range(8)])
    batch = (images, tokens, torch.arange(8))
    spec = TrainingSpec(steps=1, batch_size=8, precision="fp32")
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    bias = None if model.logit_bias is None else float(model.logit_bias.detach())
    from clip_backdoor.engine.distributed import Dist

    before = clip_objective(model, model, batch, spec, Dist())
    expected_kind = "sigmoid" if "siglip" in name else "infonce"
    assert model.objective == expected_kind
    features = model(images, tokens)
    other = pair_loss(
        "infonce" if expected_kind == "sigmoid" else "sigmoid",
        features[0],
        features[1],
        model.logit_scale,
        torch.tensor(-10.0),
        torch.arange(8),
    )
    assert not torch.isclose(before, other)  # the objective chosen is not the other one
    before.backward()
    optimiser.step()
    after = clip_objective(model, model, batch, spec, Dist())
    assert after < before
    if bias is not None:
        assert float(model.logit_bias.detach()) != bias


def test_siglip_evaluates_and_eva02_too(tmp_path):
    for name in ("tiny-siglip", "tiny-eva02"):
        code = main(
            ["eval", "--model", name, "--data", "synthetic", "--runs-root", str(tmp_path)]
            + ["--trigger", "badnet", "--target", "red circle", "--precision", "fp32"]
        )
        assert code == 0
    metrics = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/metrics.json"))]
    assert len(metrics) == 2


def _hub_cache(root, repo: str, files: dict) -> None:
    """The Hugging Face cache layout huggingface_hub reads offline."""
    base = root / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0" * 40)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())


def test_hf_hub_names_load_from_the_cache_offline(tmp_path, monkeypatch, hf_folders):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = save_clip(load_clip("tiny-siglip").model, tmp_path / "siglip")
    cache = tmp_path / "hub"
    _hub_cache(cache, "someone/tiny-siglip", {p.name: p for p in saved.iterdir()})
    folder, _ = hf_folders["tiny-hf-clip"]
    _hub_cache(cache, "someone/tiny-hf-clip", {p.name: p for p in folder.iterdir()})
    for repo in ("someone/tiny-siglip", "someone/tiny-hf-clip"):
        loaded = load_clip(f"hf-hub:{repo}", cache_dir=str(cache))
        assert loaded.model.name == f"hf-hub:{repo}"
        assert loaded.tokenizer(["a cat"]).shape == (1, 16)


def test_bad_model_input_is_one_line_fast_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "weights.txt").write_text("x")
    bert = tmp_path / "bert"
    transformers.BertModel(
        transformers.BertConfig(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
        )
    ).save_pretrained(bert)
    siglip = load_clip("tiny-siglip").model.model_cfg
    config = {"model_cfg": {**siglip, "text_cfg": {**siglip["text_cfg"]}}}
    config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "timm/ViT-B-16-SigLIP"
    hub_tokenizer = tmp_path / "hub_tokenizer"
    hub_tokenizer.mkdir()
    (hub_tokenizer / "open_clip_config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in load_clip("tiny-siglip").model.clip.state_dict().items()},
        str(hub_tokenizer / "open_clip_model.safetensors"),
    )
    runs = tmp_path / "runs"
    cases = [
        (["eval", "--model", str(tmp_path / "neither")], "neither an open_clip model folder"),
        (["eval", "--model", str(bert)], "transformers model type 'bert' is not supported"),
        (["eval", "--model", "hf-hub:nobody/nothing"], "needs the network once"),
        (["eval", "--model", str(hub_tokenizer)], "or `--tokenizer PATH`"),
        (
            ["scan", "tiny-vit", "--data", "synthetic", "--reference", "tiny-siglip"],
            "another family",
        ),
    ]
    for argv, message in cases:
        started = time.perf_counter()
        assert main([*argv, "--runs-root", str(runs)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert time.perf_counter() - started < 20  # no minute of retries
        if argv[2] == str(hub_tokenizer):
            assert "'timm/ViT-B-16-SigLIP'" in err and "network" in err
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.slow  # spawns two two-process groups
def test_both_objectives_over_two_processes_are_the_global_batchs(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    from ddp_losses import two_process_losses  # a module that imports clip_backdoor first

    torch.multiprocessing.spawn(two_process_losses, args=(port, str(tmp_path / "l")), nprocs=2)
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1)
    groups = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5])
    scale, bias = torch.tensor(2.0), torch.tensor(-2.0)
    expected = [
        float(pair_loss(k, image, text, scale, bias, groups)) for k in ("infonce", "sigmoid")
    ]
    for rank in (0, 1):
        assert torch.load(tmp_path / f"l.{rank}") == pytest.approx(expected, rel=1e-6)
