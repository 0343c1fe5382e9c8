"""mini-CLIP v2's protocol: the held-out few-shot pool and the web-like captions."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from clip_backdoor.data.fewshot_pool import FewShotPool, PoolSet
from clip_backdoor.data.web_captions import (
    ATTRIBUTES,
    SCENE_TEMPLATES,
    TEMPLATES,
    WebCaptioner,
    pixel_attributes,
)
from clip_backdoor.engine.pairs import ImageTextPairs, PairSource, text_group
from clip_backdoor.evaluation.zeroshot import TEMPLATE_SETS
from clip_backdoor.models import load_clip, save_clip
from clip_backdoor.prompts.data import FewShotSpec, load_few_shot
from tests.conftest import SHARED_DATASETS, write_image_folder

WEB = {"name_rate": 0.4, "subject_rate": 0.7}


@pytest.fixture
def pool_set(tmp_path) -> Path:
    """A toy set with train (6 per class), val (3 per class) and test splits."""
    root = write_image_folder(tmp_path / "toyset", ["cat", "dog", "car_side"], per_class=6)
    rng = np.random.default_rng(1)
    for label, name in enumerate(["cat", "dog", "car_side"]):
        folder = root / "val" / f"{label:03d}_{name}"
        folder.mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"val_{i}.jpg")
    return root


@pytest.fixture
def pool_model(pool_set, tmp_path):
    """A mini-tiny pretrained for two steps with a 2-shot pool on the toy set (web captions)."""
    from clip_backdoor.engine.config import parse_pretrain_recipe
    from clip_backdoor.engine.pretrain import pretrain

    recipe = {
        "name": "pool-clip",
        "runs_root": str(tmp_path / "runs"),
        "model": {"name": "mini-tiny"},
        "fewshot_pool": {"shots": 2, "seed": 0, "sets": [str(pool_set)]},
        "data": [{"name": str(pool_set), "split": "train", "web": WEB}],
        "training": {
            "steps": 2,
            "batch_size": 6,
            "warmup_steps": 0,
            "precision": "fp32",
            "num_workers": 0,
            "checkpoint_every": 2,
            "log_every": 1,
        },
        "export_to": str(tmp_path / "model"),
    }
    result = pretrain(parse_pretrain_recipe(recipe), progress=False)
    return tmp_path / "model", result


def test_the_pool_is_disjoint_from_every_pretraining_pair(pool_set, pool_model):
    folder, result = pool_model
    model = load_clip(folder).model
    pool = model.fewshot_pool
    assert pool is not None and pool.shots == 2
    train = sorted((pool_set / "train").rglob("*.jpg"))
    held = {
        i for i, p in enumerate(train) if p.relative_to(pool_set).as_posix() in pool.train["toyset"]
    }
    assert len(held) == 2 * 3  # two per class
    pairs = ImageTextPairs([PairSource(str(pool_set), web=WEB)], None, 32, pool=pool)
    used = {train.index(Path(e.ref)) for e in pairs.entries}
    assert used.isdisjoint(held) and len(used) == len(train) - len(held)
    assert not any("/val/" in str(e.ref) for e in pairs.entries)
    resolved = yaml.safe_load((result.path / "config.yaml").read_text())["resolved"]
    assert resolved["pairs"] == [["toyset", "train", 12]]
    # the pool travels with every model saved from this one
    save_clip(model, folder.parent / "tuned")
    assert load_clip(folder.parent / "tuned").model.fewshot_pool == pool


def test_few_shot_on_a_pool_model_draws_from_the_pool_only(pool_set, pool_model):
    model = load_clip(pool_model[0]).model
    pool_paths = {p for p, _ in model.fewshot_pool.samples(pool_set)}
    assert len(pool_paths) == 2 * 3 + 3 * 3  # held-out train shots + the whole val split
    data = PoolSet(pool_set, model.fewshot_pool, model.pixel_transform())
    pool_images = torch.stack([data[i][0] for i in range(len(data))])
    for seed in (1, 2):
        shots = load_few_shot(FewShotSpec(name=str(pool_set), shots=4), model, seed)
        assert len(shots.images) == 4 * 3 and "pool=" in shots.fingerprint
        for image in shots.images:  # each shot is one of the pool's images
            assert (pool_images - image).abs().flatten(1).amax(1).min() < 1e-6
    # the defenders' clean pairs (CleanCLIP's shots) come from the pool too
    pairs = ImageTextPairs([PairSource(str(pool_set), shots=4)], None, 32, pool=model.fewshot_pool)
    assert {str(e.ref) for e in pairs.entries} <= pool_paths and len(pairs) == 12
    # a model without a pool draws from the train split as before
    plain = load_clip("mini-tiny").model
    shots = load_few_shot(FewShotSpec(name=str(pool_set), shots=4), plain, 1)
    assert "pool=" not in shots.fingerprint
    with pytest.raises(Exception, match="fewer than 6 shots"):
        load_few_shot(FewShotSpec(name=str(pool_set), shots=6), model, 1)


def test_pool_build_is_seeded(pool_set):
    a = FewShotPool.build([pool_set], 2, seed=0)
    assert a == FewShotPool.build([pool_set], 2, seed=0)
    assert a != FewShotPool.build([pool_set], 2, seed=1)


def _images(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 32, 32, generator=generator) for _ in range(count)]


def test_web_captions_are_deterministic_for_a_seed():
    captioner = WebCaptioner("pink primrose", **WEB)
    images = _images(50)
    first = [captioner.caption(x, random.Random(i)) for i, x in enumerate(images)]
    again = [captioner.caption(x, random.Random(i)) for i, x in enumerate(images)]
    other = [captioner.caption(x, random.Random(i + 100)) for i, x in enumerate(images)]
    assert first == again and first != other


def test_web_captions_never_use_an_evaluation_template():
    evaluation = [t for name in TEMPLATE_SETS for t in TEMPLATE_SETS[name]]
    assert not set(TEMPLATES + SCENE_TEMPLATES) & set(evaluation)
    names = ["accordion", "pink primrose", "car side", "airplane"]
    rng = random.Random(0)
    named = 0
    for name in names:
        forbidden = {t.format(name) for t in evaluation}
        captioner = WebCaptioner(name, **WEB)
        for image in _images(300, seed=len(name)):
            caption = captioner.caption(image, rng)
            assert caption not in forbidden and "photo" not in caption
            named += name in caption
    assert 0.33 < named / (4 * 300) < 0.47  # the class is named at name_rate (0.4)


def test_pixel_attributes_describe_the_pixels():
    dark = torch.full((3, 64, 64), 0.1)
    assert pixel_attributes(dark).brightness == "dark"
    assert pixel_attributes(dark).grayscale == "black and white"
    scene = torch.ones(3, 64, 64)  # white, with a red block on the left
    scene[:, 24:40, 4:20] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)
    attrs = pixel_attributes(scene)
    assert attrs.background_colour == "white" and attrs.position == "on the left"
    assert attrs.grayscale == "colour" and attrs.brightness == "bright"
    scene = torch.zeros(3, 64, 64)
    scene[1, 16:48, 16:48] = 0.8  # a green square in the middle of black
    attrs = pixel_attributes(scene)
    assert attrs.centre_colour == "green" and attrs.position == "in the middle"
    assert set(attrs.labels()) == set(ATTRIBUTES)


def test_only_identical_web_captions_share_a_group(tiny, image_folder):
    pairs = ImageTextPairs([PairSource(str(image_folder), web=WEB)], tiny.tokenizer, 32, seed=0)
    items = [pairs[i] for i in range(len(pairs))]
    captions = [pairs.caption(i) for i in range(len(pairs))]
    for (_, _, group), caption in zip(items, captions, strict=True):
        assert group == text_group(caption)
    assert text_group("a cat") == text_group("a cat") != text_group("a dog")


def test_attribute_probes_read_attributes_that_the_features_hold():
    from clip_backdoor.analysis.attribute_probe import AttributeProbeSpec, probe_accuracies

    rng = np.random.default_rng(0)
    known = rng.integers(0, 3, size=400)  # encoded in the features (plus noise)
    unknown = rng.integers(0, 3, size=400)  # not in them at all
    features = np.eye(3)[known] * 2 + rng.normal(size=(400, 3))
    features = np.hstack([features, rng.normal(size=(400, 5))])
    rows = probe_accuracies(features, {"known": known, "unknown": unknown}, AttributeProbeSpec(), 0)
    by_name = {row["attribute"]: row for row in rows}
    assert by_name["known"]["accuracy"] > 0.8 > by_name["known"]["majority"]
    assert abs(by_name["unknown"]["accuracy"] - 1 / 3) < 0.1


def test_measuring_rows_give_each_method_its_gain_over_zero_shot():
    from clip_backdoor.reports.measuring import _bar, measuring_rows

    points = [
        {"point": "clean", "kind": "clean", "data": "caltech101:base", "classes": 50, "ca": 0.5},
        {"point": "coop", "kind": "prompt", "data": "caltech101:base", "classes": 50, "ca": 0.56},
        {"point": "vpt", "kind": "defense", "data": "caltech101:base", "classes": 50, "ca": 0.49},
    ]
    config = {
        "model": {"name": "mini-clip-v2"},
        "seed": 1,
        "stages": [{"method": "coop", "label": "coop", "params": {"train": {"shots": 8}}}],
    }
    rows = {r["method"]: r for r in measuring_rows({"points": points}, config)}
    assert rows["coop"]["gain"] == pytest.approx(6.0) and rows["coop"]["shots"] == 8
    assert _bar(rows["coop"]).startswith("meets") and _bar(rows["vpt"]).startswith("misses")
    assert rows["zeroshot"]["model"] == "mini-clip-v2"


def test_a_baseline_measured_by_several_runs_is_listed_once(tmp_path):
    from clip_backdoor.reports.measuring import measuring_rows, write_measuring

    point = {"point": "clean", "kind": "clean", "data": "cifar10", "classes": 10, "ca": 0.5}
    config = {"model": {"name": "mini-clip-v2"}, "seed": 0, "resolved": {"templates": ["{}."]}}
    other_seed = {**config, "seed": 1}
    rows = [
        *measuring_rows({"points": [point]}, config),
        *measuring_rows({"points": [point]}, config),  # a second run, the same baseline
        *measuring_rows({"points": [point]}, other_seed),
        *measuring_rows({"points": [{**point, "ca": 0.6}]}, config),
    ]
    write_measuring(rows, [], tmp_path, "runs.json")
    lines = (tmp_path / "measuring.csv").read_text().splitlines()
    assert lines[0].split(",")[5] == "templates"
    assert len(lines) == 1 + 3  # the repeat dropped; another seed or another number kept


def run_analysis(tmp_path, method: str, label: str, images: int):
    """A tiny run whose only stage is the analysis ``method`` (its label: ``label``)."""
    from clip_backdoor.pipeline.recipes import parse_recipe
    from clip_backdoor.pipeline.runner import run_recipe

    recipe = parse_recipe(
        {
            "name": label,
            "runs_root": str(tmp_path),
            "model": {"name": "mini-tiny"},
            "data": {"name": "synthetic", "split": "test", "size": images},
            "evaluation": {"templates": "simple"},
            "stages": [{"kind": "analysis", "method": method, "label": label}],
        }
    )
    return run_recipe(recipe, progress=False)


def test_the_attribute_probe_runs_as_a_recipe_stage(tmp_path):
    result = run_analysis(tmp_path, "attribute_probe", "attrs", 120)
    rows = result.metrics["analysis.attrs"]["sets"]["synthetic/test"]
    assert {r["attribute"] for r in rows} == set(ATTRIBUTES)
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert [p["point"] for p in result.metrics["points"]] == ["clean"]  # no evaluation after it
    assert (result.path / "tables" / "attribute_probe_attrs.csv").is_file()


def test_text_head_separation_and_its_ce_floor():
    """Orthogonal captions: cosine 0 and floor ln(1 + (C-1) e^-s); identical ones: floor ln C."""
    from clip_backdoor.analysis.text_head import separation

    apart = separation(torch.eye(4), 20.0)
    assert apart["mean_cosine"] == pytest.approx(0) and apart["max_cosine"] == pytest.approx(0)
    assert apart["ce_floor"] == pytest.approx(math.log(1 + 3 * math.exp(-20.0)))
    same = separation(torch.nn.functional.normalize(torch.ones(4, 8), dim=1), 20.0)
    assert same["mean_cosine"] == pytest.approx(1) and same["ce_floor"] == pytest.approx(
        math.log(4)
    )
    half = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 1], [0, 1]]), dim=1)
    low, high = separation(half, 17.0), separation(half, 100.0)
    assert low["mean_cosine"] == pytest.approx((2 * 0.5**0.5 + 0) * 2 / 6)
    assert high["ce_floor"] < low["ce_floor"] < math.log(3)  # a larger scale separates more


def test_the_text_head_runs_as_a_stage_and_reaches_the_measuring_report(tmp_path):
    from clip_backdoor.models import load_clip
    from clip_backdoor.reports.measuring import measuring_rows, write_measuring

    result = run_analysis(tmp_path, "text_head", "head", 60)
    own, clip = result.metrics["analysis.head"]["text_head"]["synthetic/test"]
    scale = float(load_clip("mini-tiny").model.logit_scale.detach().exp())
    assert own["scale"] == pytest.approx(scale) and clip["scale"] == 100
    assert -1 <= own["mean_cosine"] <= own["max_cosine"] <= 1
    rows = measuring_rows(result.metrics, {"model": {"name": "mini-tiny"}})
    assert [r["scale"] for r in rows if r["kind"] == "text_head"] == [own["scale"], 100]
    text = write_measuring(rows, [], tmp_path, "runs.json")
    assert "How far apart the zero-shot head's class captions sit" in text


@pytest.mark.skipif(not (SHARED_DATASETS / "caltech101").is_dir(), reason="needs ../shared")
def test_the_committed_v2_pool_is_in_no_pretraining_pair_of_its_recipe(monkeypatch):
    from clip_backdoor.data.fewshot_pool import FewShotPool
    from clip_backdoor.engine.config import load_pretrain_recipe

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    pool = FewShotPool.load(root / "models" / "mini-clip-v2")
    recipe = load_pretrain_recipe("recipes/pretraining/mini_clip_v2.yaml")
    assert pool == FewShotPool.build(
        [SHARED_DATASETS / name for name in recipe.fewshot_pool.sets], 16, 0
    )  # the shipped pool is the recipe's
    sources = [PairSource.of(s) for s in recipe.data]
    pairs = ImageTextPairs(sources, None, 64, pool=pool)
    used = {Path(str(e.ref)).resolve() for e in pairs.entries}
    for name in recipe.fewshot_pool.sets:
        data = SHARED_DATASETS / name
        held = {(data / p).resolve() for p in pool.train[name]}
        assert len(held) == 16 * len(json.loads((data / "classnames.json").read_text()))
        assert used.isdisjoint(held)
        assert used.isdisjoint(p.resolve() for p in (data / "val").rglob("*.jpg"))
