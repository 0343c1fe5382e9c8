"""Shared fixtures: tiny models and tiny on-disk data sets, never ../shared/models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clip_backdoor  # noqa: F401  (installs the torchvision shim first)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def pytest_configure(config):
    """Under ``pytest -n 2`` (``make test``) each worker, and what it starts, takes one core:
    two workers of two threads each on two cores run the suite slower than one."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # and the processes the tests start


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CLIP_BACKDOOR_CACHE", str(tmp_path_factory.mktemp("cache")))
    # the results tables' bars: this checkout's, wherever a test runs from
    monkeypatch.setenv("CLIP_BACKDOOR_TARGETS", str(REPO / "recipes" / "targets.yaml"))
    monkeypatch.setenv("CLIP_BACKDOOR_SETTINGS", str(REPO / "clip-backdoor.yaml"))  # data roots


@pytest.fixture(autouse=True, scope="session")
def _fp32_where_auto():
    """'auto' resolves to fp32 in the suite on every CPU: the tests assert numbers measured in
    fp32 and CI machines differ (AVX2 only, avx512_bf16, AMX), and bf16 autocast of the tests'
    tiny shapes is slower, not faster (an untrained ViT-B-32 scan step: 38 s in bf16 vs 6 s in
    fp32 on an AMX Xeon). The CPU is made to report no bf16 flag; test_precision fakes the
    flags of each kind of CPU and checks the real choice. ``CLIP_BACKDOOR_PRECISION=bf16``
    runs the suite in bf16 instead (slow where bf16 is not native)."""
    import clip_backdoor.core.precision as precision

    with pytest.MonkeyPatch.context() as patch:
        if precision.forced() is not None:
            yield
            return
        patch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
        yield


@pytest.fixture(scope="session")
def tiny_attack_cache(tmp_path_factory) -> str:
    """One cache for every module that runs test_poisoning's tiny attack, so it trains once per
    session (test_poisoning itself keeps the isolated cache: it asserts the first training)."""
    return str(tmp_path_factory.mktemp("tiny_attack_cache"))


@pytest.fixture
def shared_cache(tiny_attack_cache, monkeypatch) -> str:
    monkeypatch.setenv("CLIP_BACKDOOR_CACHE", tiny_attack_cache)
    return tiny_attack_cache


@pytest.fixture(scope="session")
def tiny_poisoning(tiny_attack_cache, tmp_path_factory):
    """test_poisoning's tiny BadNet attack, run once per session into the shared cache: the
    first run of it in the session, so test_poisoning asserts a real training on this result
    and every other module reuses its artifact."""
    from test_poisoning import RECIPE

    from clip_backdoor.pipeline.recipes import parse_recipe
    from clip_backdoor.pipeline.runner import run_recipe

    recipe = {**RECIPE, "runs_root": str(tmp_path_factory.mktemp("tiny_poisoning") / "runs")}
    with pytest.MonkeyPatch.context() as patch:  # a session fixture runs before the autouse one
        patch.setenv("CLIP_BACKDOOR_CACHE", tiny_attack_cache)
        return run_recipe(parse_recipe(recipe), progress=False)


@pytest.fixture
def poisoned_cache(shared_cache, tiny_poisoning) -> str:
    """The shared cache with the tiny attack's artifact in it."""
    return shared_cache


@pytest.fixture(scope="session")
def tiny():
    from clip_backdoor.models import load_clip

    return load_clip("mini-tiny")


def write_image_folder(root: Path, classnames: list[str], per_class: int, size: int = 40) -> Path:
    """classnames.json + train/ and test/ folders of random JPEGs in the shared layout."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.json").write_text(json.dumps(classnames))
    for split in ("train", "test"):
        for label, name in enumerate(classnames):
            folder = root / split / f"{label:03d}_{name}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i}.jpg")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "toyset", ["cat", "dog", "car_side"], per_class=4)


@pytest.fixture(scope="session")
def synthetic_clip(tmp_path_factory) -> Path:
    """A tiny CLIP pretrained for seconds on the synthetic set (it has learnt colours and
    shapes), exported as a model folder; for methods that need a model that is not random."""
    from clip_backdoor.engine.config import parse_pretrain_recipe
    from clip_backdoor.engine.pretrain import pretrain

    root = tmp_path_factory.mktemp("synthetic_clip")
    recipe = {
        "name": "synthetic-clip",
        "seed": 0,
        "runs_root": str(root / "runs"),
        "model": {"name": "mini-tiny"},
        "data": [{"name": "synthetic", "split": "train", "size": 960, "templates": "simple"}],
        "training": {
            "steps": 300,
            "batch_size": 48,
            "lr": 1e-3,
            "warmup_steps": 20,
            "precision": "fp32",
            "num_workers": 0,
            "checkpoint_every": 300,
            "log_every": 100,
        },
        "evaluation": [{"name": "synthetic", "split": "test", "size": 240}],
        "eval_templates": "simple",
        "export_to": str(root / "model"),
    }
    pretrain(parse_pretrain_recipe(recipe), progress=False)
    return root / "model"
