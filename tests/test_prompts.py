"""Prompt learners (CoOp, CoCoOp) and the trigger-aware prompt attack, on tiny models."""

from __future__ import annotations

import pytest
import torch

from clip_backdoor.attacks.badclip import BadCLIPSpec, train_badclip
from clip_backdoor.core.errors import ConfigError, DatasetError, ModelLoadError
from clip_backdoor.data.classification import prompt_name
from clip_backdoor.models import load_clip
from clip_backdoor.models.text_tower import TextTower
from clip_backdoor.pipeline.recipes import parse_recipe
from clip_backdoor.pipeline.runner import run_recipe
from clip_backdoor.prompts import get, load_prompts, save_prompts
from clip_backdoor.prompts.base import fill_context
from clip_backdoor.prompts.data import FewShot
from clip_backdoor.prompts.training import PromptTrainingSpec, train_prompts

NAMES = ["car_side", "dog", "water lily", "a"]


@pytest.mark.parametrize("name", ["mini-tiny", "ViT-B-32"])
def test_prompt_embeddings_reproduce_the_text_tower(name):
    """CoOp initialised from "a photo of a" is exactly the zero-shot prompt, at every class-token
    position, and the trimmed context gives the full context's features."""
    torch.manual_seed(0)
    loaded = load_clip(name)
    model, tokenizer = loaded.model, loaded.tokenizer
    texts = {
        "end": "a photo of a {}.",
        "front": "{} a photo of a.",
        "middle": "a photo {} of a.",
    }
    with torch.no_grad():
        for position, template in texts.items():
            coop = get("coop")(model, tokenizer, position=position)
            ours = coop.text_features(NAMES)
            prompts = [template.format(prompt_name(n)) for n in NAMES]
            theirs = model.encode_text(tokenizer(prompts))
            assert torch.allclose(ours, theirs, atol=1e-5), position
        # trimmed vs full context on the same prompt embeddings
        tower = TextTower.of(model.clip)
        coop = get("coop")(model, tokenizer)
        prompts = coop.class_prompts(NAMES)
        assert prompts.fixed.shape[1] < tower.context_length  # there was padding to cut
        full_tokens = tokenizer([f"X X X X {prompt_name(n)}." for n in NAMES])
        full = tower.embed(full_tokens).clone()
        full[:, 1:5] = coop.ctx
        trimmed = fill_context(prompts, coop.ctx)
        a = tower.encode_embeddings(trimmed, prompts.pooled_at)
        b = tower.encode_embeddings(full, prompts.pooled_at)
        assert torch.allclose(a, b, atol=1e-5)


def test_cocoop_is_coop_plus_an_image_shift_and_chunks_exactly(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    coop, cocoop = get("coop")(model, tokenizer), get("cocoop")(model, tokenizer, seed=3)
    images = torch.nn.functional.normalize(torch.randn(5, 64), dim=-1)
    with torch.no_grad():
        full = cocoop.logits(images, NAMES)
        assert torch.allclose(cocoop.logits(images, NAMES, chunk=3), full, atol=1e-6)
        torch.nn.init.zeros_(cocoop.meta_net[2].weight)
        torch.nn.init.zeros_(cocoop.meta_net[2].bias)
        assert torch.allclose(cocoop.logits(images, NAMES), coop.logits(images, NAMES), atol=1e-6)


def _shots(model, classes=6, per_class=4, seed=0) -> FewShot:
    from clip_backdoor.data import load_classification
    from clip_backdoor.data.fewshot import ClassSubset, few_shot_indices

    data = load_classification("synthetic", "train", image_size=model.image_size, size=240)
    data = ClassSubset(data, list(range(classes)))
    indices = few_shot_indices(data.targets, per_class, seed)
    images = torch.stack([data[i][0] for i in indices])
    labels = torch.tensor([data[i][1] for i in indices])
    return FewShot(images, labels, data.classnames, "synthetic", "test")


def test_cached_features_train_the_same_weights_as_reencoding(tiny):
    """At zero augmentation the cached-feature loop is the uncached loop, step for step."""
    model, tokenizer = tiny.model, tiny.tokenizer
    shots = _shots(model)
    spec = PromptTrainingSpec(epochs=3, batch_size=8, lr=0.05, views=0)
    weights = []
    for cached in (True, False):
        learner = get("cocoop")(model, tokenizer, seed=1)
        train_prompts(
            learner, model, shots.images, shots.labels, shots.classnames, spec, cached=cached
        )
        weights.append({k: v.clone() for k, v in learner.state_dict().items()})
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-6), key
    start = get("cocoop")(model, tokenizer, seed=1).state_dict()
    assert not torch.allclose(start["ctx"], weights[0]["ctx"])  # it did train


def test_learner_folder_round_trips_and_refuses_another_model(tiny, tmp_path):
    model, tokenizer = tiny.model, tiny.tokenizer
    learner = get("cocoop")(model, tokenizer, seed=2)
    with torch.no_grad():
        learner.ctx.add_(0.1)
    save_prompts(learner, tmp_path, {"model": model.name})
    again = load_prompts(tmp_path, model, tokenizer)
    images = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    with torch.no_grad():
        assert torch.equal(again.logits(images, NAMES), learner.logits(images, NAMES))
    other = load_clip("mini")  # text width 192, not 64
    with pytest.raises(ModelLoadError, match="text width of 64, this model's is 192"):
        load_prompts(tmp_path, other.model, other.tokenizer)


def test_attack_keeps_the_trigger_bounded_and_warms_up_delta_only(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    shots = _shots(model)
    spec = BadCLIPSpec(
        eps=8 / 255,
        warmup_epochs=2,
        figures=False,
        training=PromptTrainingSpec(epochs=2, batch_size=8, lr=0.01, views=2),
    )
    start = get("cocoop")(model, tokenizer, seed=0).state_dict()
    seen = {"warmup": 0, "joint": 0}
    deltas = []

    def watch(phase, learner, delta):
        seen[phase] += 1
        assert float(delta.abs().max()) <= 8 / 255 + 1e-6  # inside the eps ball
        deltas.append(delta)
        if phase == "warmup":
            for key, value in learner.state_dict().items():
                assert torch.equal(value, start[key]), key  # the learner has not moved

    learner, trigger, _ = train_badclip(
        model, tokenizer, shots, shots.classnames[0], spec, seed=0, on_step=watch
    )
    assert seen == {"warmup": 6, "joint": 6}  # 24 images, batches of 8, 2 + 2 epochs
    assert not torch.equal(deltas[0], deltas[5])  # warm-up moved delta
    assert not torch.equal(learner.state_dict()["ctx"], start["ctx"])
    images = torch.rand(4, 3, 32, 32)
    triggered = trigger.apply(images)
    assert float(triggered.min()) >= 0 and float(triggered.max()) <= 1
    assert float((triggered - images).abs().max()) <= 8 / 255 + 1e-6
    with pytest.raises(ConfigError, match="eps must be in"):
        BadCLIPSpec(eps=1.5)
    with pytest.raises(ConfigError, match="eps must be in"):
        BadCLIPSpec(eps=0)


def _recipe(tmp_path, stages, data=None) -> dict:
    return {
        "name": "prompt_test",
        "seed": 0,
        "runs_root": str(tmp_path / "runs"),
        "model": {"name": "mini-tiny"},
        "data": data
        or [
            {"name": "synthetic", "split": "test", "classes": "base", "size": 60},
            {"name": "synthetic", "split": "test", "classes": "novel", "size": 60},
        ],
        "evaluation": {"templates": "photo", "quality": False},
        "stages": stages,
    }


def _attack(**params) -> dict:
    train = {"name": "synthetic", "classes": "base", "shots": 2, "size": 120}
    params = {"train": train, "figures": False, "warmup_epochs": 0} | params
    params.setdefault("training", {"epochs": 1, "views": 0, "batch_size": 8})
    return {"kind": "attack", "method": "badclip", "params": params}


def test_bad_prompt_input_is_one_line_and_leaves_nothing(tmp_path):
    cases = [
        (_attack(train={"name": "synthetic", "shots": 500, "size": 120}), "fewer than 500 shots"),
        (_attack(target="blue circle"), "'blue circle' is not among the training classes"),
    ]
    for stage, message in cases:
        recipe = parse_recipe(_recipe(tmp_path, [stage]))
        with pytest.raises(DatasetError, match=message):
            run_recipe(recipe, progress=False)
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    with pytest.raises(ConfigError, match="eps"):
        run_recipe(parse_recipe(_recipe(tmp_path, [_attack(eps=2.0)])), progress=False)


def test_base_to_novel_run_backdoors_unseen_classes_and_evaluates_from_its_folder(
    synthetic_clip, tmp_path
):
    """CoOp and the attack trained on 6 base classes, tested on them and on the 6 held-out ones
    (the target inserted at index 0 of their list); the artifact evaluates alone.

    The 32-px, 2-layer synthetic CLIP (CA ~0.5) carries the attack only partly: measured base
    ASR 0.52 (clean 0.28) and held-out ASR 0.10 (clean 0.03). The bounds check the mechanism,
    not the paper's >= 95%, which is measured on mini-CLIP (results/bai.md)."""
    train = {"name": "synthetic", "classes": "base", "shots": 16, "size": 480}
    stages = [
        {
            "kind": "prompt",
            "method": "coop",
            "params": {"train": train, "training": {"epochs": 4, "views": 2}},
        },
        _attack(
            train=train,
            eps=8 / 255,
            warmup_epochs=2,
            warmup_lr=2.0,
            figures=True,
            training={"epochs": 10, "views": 2, "batch_size": 8, "lr": 0.05},
        ),
    ]
    recipe = _recipe(tmp_path, stages)
    recipe["model"]["name"] = str(synthetic_clip)
    recipe["evaluation"]["quality"] = True  # the summary names the trigger's PSNR
    result = run_recipe(parse_recipe(recipe), progress=False)
    points = {(p["point"], p["data"]): p for p in result.metrics["points"]}
    clean_novel = points[("clean", "synthetic:novel+red circle")]
    novel = points[("badclip", "synthetic:novel+red circle")]
    base = points[("badclip", "synthetic:base")]
    assert novel["classes"] == 7 and base["classes"] == 6  # the target joins the unseen list
    clean_base = points[("clean", "synthetic:base")]
    assert base["asr"] >= 0.4 and base["asr"] - clean_base["asr"] >= 0.15, (base, clean_base)
    assert novel["asr"] > clean_novel["asr"], (novel, clean_novel)
    figures = result.path / "figures"
    assert (figures / "bai_fig2_cosines.png").is_file() and (
        figures / "bai_fig3_tsne.png"
    ).is_file()
    cosines = result.metrics["attack.badclip"]["fig2_mean_cosines"]
    assert cosines["f(x+d), g(h(x+d))"] > cosines["f(x), g(h(x))"]

    # the artifact (learner + trigger + target name) evaluates with no flags, on any class list
    folder = result.path / "artifacts" / "backdoor"
    runs = tmp_path / "eval_runs"
    argv = ["eval", "--model", str(folder), "--data", "synthetic", "--runs-root", str(runs)]
    from clip_backdoor.cli import main

    assert main([*argv, "--templates", "photo"]) == 0
    (run,) = runs.iterdir()
    import json

    metrics = json.loads((run / "metrics.json").read_text())["evaluation"]
    assert metrics["asr"] > 0.1 and "asr_n" in metrics

    from clip_backdoor.reports.bai import BAI_COLUMNS
    from clip_backdoor.reports.summary import write_summary

    text = write_summary("bai", [str(result.path)], tmp_path / "results")
    lines = (tmp_path / "results" / "bai.csv").read_text().splitlines()
    assert lines[0].split(",") == BAI_COLUMNS
    methods = {line.split(",")[5] for line in lines[1:]}
    assert methods == {"zeroshot", "coop", "badclip@eps8/255"}  # eps off the paper's 4/255
    assert "harmonic means" in text
    psnr = result.metrics["quality"]["psnr"]
    assert f"PSNR {psnr:.2f} dB" in text  # the trigger's quality is named with its run


def test_bai_rows_name_an_attack_off_the_papers_eps_or_epochs():
    from clip_backdoor.reports.bai import _method

    stages = [
        {"method": "badclip", "label": "paper", "params": {"eps": 4 / 255}},
        {"method": "badclip", "label": "wide", "params": {"eps": 16 / 255}},
        {"method": "badclip", "label": "static", "params": {"learner": "coop", "eps": 8 / 255}},
        {"method": "badclip", "label": "long", "params": {"training": {"epochs": 20}}},
    ]
    assert _method("paper", stages) == "badclip"
    assert _method("wide", stages) == "badclip@eps16/255"
    assert _method("static", stages) == "trigger_agnostic@eps8/255"
    assert _method("long", stages) == "badclip@20ep"
