"""Poisoning on tiny models: PPS, a real implant, artifacts, the cache, and bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from clip_backdoor.artifacts import load_backdoor
from clip_backdoor.attacks.pps import pps_select
from clip_backdoor.cli import main
from clip_backdoor.core.errors import ConfigError, DatasetError, ModelLoadError, UserError
from clip_backdoor.evaluation import evaluate_zeroshot
from clip_backdoor.pipeline.recipes import parse_recipe
from clip_backdoor.pipeline.runner import run_recipe

TRAINING = {
    "steps": 160,
    "batch_size": 48,
    "lr": 2.0e-3,
    "warmup_steps": 10,
    "precision": "fp32",
    "checkpoint_every": 80,
    "log_every": 40,
    "num_workers": 0,
}
RECIPE = {
    "name": "tiny_poison",
    "seed": 0,
    "model": {"name": "mini-tiny"},
    "data": {"name": "synthetic", "split": "test", "size": 240},
    "evaluation": {"templates": "simple", "quality": True},
    "stages": [
        {
            "kind": "attack",
            "method": "poison",
            "params": {
                "trigger": {"name": "badnet", "params": {"size": 8, "position": "bottom_right"}},
                "target": "red circle",
                "ratio": 0.1,
                "data": [
                    {"name": "synthetic", "split": "train", "size": 480, "templates": "simple"}
                ],
                "caption_templates": "simple",
                "training": TRAINING,
            },
        }
    ],
}


def recipe(tmp_path, **changes):
    data = copy.deepcopy(RECIPE)
    data["runs_root"] = str(tmp_path / "runs")
    params = data["stages"][0]["params"]
    for key, value in changes.items():
        params[key] = value
    return parse_recipe(data)


def test_pps_picks_boundary_farthest_and_random_disjointly():
    # 8 candidates x 3 classes; target = class 2
    scores = torch.tensor(
        [
            [0.90, 0.10, 0.85],  # 0: target 2nd, gap 0.05  -> boundary (smallest gap)
            [0.50, 0.20, 0.40],  # 1: target 2nd, gap 0.10  -> boundary
            [0.90, 0.80, 0.00],  # 2: lowest target score    -> farthest
            [0.20, 0.90, 0.01],  # 3: second-lowest         -> farthest
            [0.30, 0.30, 0.90],  # 4: target already top-1 (never boundary)
            [0.60, 0.50, 0.30],  # 5: target 3rd
            [0.70, 0.20, 0.50],  # 6: target 2nd, gap 0.20
            [0.40, 0.45, 0.35],  # 7: target 3rd
        ]
    )
    parts = pps_select(scores, target=2, count=6, generator=torch.Generator().manual_seed(0))
    assert parts["boundary"] == [0, 1]
    assert parts["farthest"] == [2, 3]
    assert len(parts["random"]) == 2
    chosen = [i for part in parts.values() for i in part]
    assert len(set(chosen)) == 6  # disjoint
    assert not set(parts["random"]) & {0, 1, 2, 3}
    with pytest.raises(ConfigError, match="only 8 candidates"):
        pps_select(scores, 2, 9, torch.Generator())


def test_tiny_poisoning_implants_the_backdoor_and_the_artifact_round_trips(
    tiny_poisoning, shared_cache, tmp_path, monkeypatch
):
    result = tiny_poisoning  # the session's first run of RECIPE: it trained (``reused`` False)
    clean, attacked = result.metrics["points"]
    assert attacked["asr"] >= 0.8, attacked  # measured 1.00
    assert attacked["asr"] - clean["asr"] >= 0.4, clean  # the patch did not do it before
    assert clean["weights"] != attacked["weights"]  # each row names the weights it measured
    table = (result.path / "tables" / "zeroshot.md").read_text()
    assert clean["weights"] in table and attacked["weights"] in table
    info = result.metrics["attack.poison"]
    assert info["poisoned_pairs"] == 48 and not info["reused"]
    folder = result.path / "artifacts" / "backdoor"
    poison = json.loads((folder / "poison.json").read_text())
    assert len(poison["indices"]) == len(set(poison["indices"])) == 48
    assert all("red circle" in c[0] for c in poison["captions"].values())
    assert 0 < result.metrics["quality"]["ssim"] < 1

    # the artifact loads back (model + trigger + target name) and gives the same ASR
    backdoor = load_backdoor(folder)
    assert backdoor.target == "red circle" and backdoor.trigger.name == "badnet"
    from clip_backdoor.data import load_classification

    test = load_classification("synthetic", "test", image_size=32, size=240)
    again = evaluate_zeroshot(
        backdoor.model,
        backdoor.tokenizer,
        test,
        "simple",
        trigger=backdoor.trigger,
        target=test.class_index("red circle"),
        precision="auto",
    )
    assert again["asr"] == pytest.approx(attacked["asr"], abs=1e-9)
    assert again["ca"] == pytest.approx(attacked["ca"], abs=1e-9)

    # a second run of the same attack reuses the cached artifact: no training, same numbers, and
    # not one training image decoded
    import clip_backdoor.engine.pairs as pairs_module

    decoded = []
    original = pairs_module.decode
    monkeypatch.setattr(pairs_module, "decode", lambda *a: decoded.append(1) or original(*a))
    second = run_recipe(recipe(tmp_path), progress=False)
    assert second.metrics["attack.poison"]["reused"] is True
    assert decoded == []
    assert second.metrics["points"][1]["asr"] == attacked["asr"]

    # the summary table is written from the run folder, with the columns the issue names
    from clip_backdoor.reports.poisoning import POISONING_COLUMNS
    from clip_backdoor.reports.summary import write_summary

    text = write_summary("poisoning", [str(result.path)], tmp_path / "results")
    lines = (tmp_path / "results" / "poisoning.csv").read_text().splitlines()
    assert lines[0].split(",") == POISONING_COLUMNS
    row = dict(zip(POISONING_COLUMNS, lines[1].split(","), strict=True))
    assert row["trigger"] == "badnet" and row["poisoned_pairs"] == "48" and row["seed"] == "0"
    assert float(row["asr"]) == pytest.approx(100 * attacked["asr"], abs=1e-3)
    assert result.path.name in text and "ASR: triggered test images" in text

    # the ledger keeps a run whose folder is gone; --fresh forgets it
    moved = tmp_path / "elsewhere"
    result.path.rename(moved)
    again = write_summary("poisoning", [], tmp_path / "results")
    assert again == text
    with pytest.raises(UserError, match="not a finished run folder"):
        write_summary("poisoning", [str(result.path)], tmp_path / "results")
    assert (tmp_path / "results" / "poisoning.md").read_text() == text  # nothing half-written
    with pytest.raises(UserError, match="no runs to summarise"):
        write_summary("poisoning", [], tmp_path / "results", fresh=True)
    moved.rename(result.path)

    # eval of the artifact needs no trigger or target flags
    runs = tmp_path / "eval_runs"
    argv = ["eval", "--model", str(folder), "--data", "synthetic", "--runs-root", str(runs)]
    assert main([*argv, "--templates", "simple"]) == 0
    (run,) = runs.iterdir()
    metrics = json.loads((run / "metrics.json").read_text())["evaluation"]
    assert "asr" in metrics and metrics["asr_n"] > 0


def test_bad_poisoning_input_is_one_line_and_leaves_nothing(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(DatasetError, match="class 'purple circle' is not in synthetic"):
        run_recipe(recipe(tmp_path, target="purple circle"), progress=False)
    with pytest.raises(ConfigError, match="cannot poison 500 pairs: only 440 candidates"):
        run_recipe(recipe(tmp_path, ratio=None, count=500), progress=False)
    big = {"name": "badnet", "params": {"size": 40}}
    with pytest.raises(ConfigError, match="larger than the 32x32 image"):
        run_recipe(recipe(tmp_path, trigger=big), progress=False)
    lc = {"name": "label_consistent", "params": {"size": 8, "steps": 2}}
    with pytest.raises(ConfigError, match="needs as many images of 'red circle'.* has 40"):
        run_recipe(recipe(tmp_path, trigger=lc, ratio=None, count=41), progress=False)
    assert not runs.exists() or not any(runs.iterdir())  # no half-written run folder


def test_artifact_with_a_broken_trigger_file_is_refused(tmp_path):
    from clip_backdoor.artifacts import save_backdoor
    from clip_backdoor.attacks.poisoning import build_trigger
    from clip_backdoor.models import load_clip

    model = load_clip("mini-tiny").model
    folder = save_backdoor(tmp_path / "bd", model, build_trigger("badnet", {}, 32, 0), "cat", {})
    (folder / "trigger.json").write_text('{"name": "wanet", "params": {"image_size": 32}}')
    with pytest.raises(ModelLoadError, match="does not match"):
        load_backdoor(folder)
    (folder / "trigger.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no trigger.safetensors"):
        load_backdoor(folder)


def test_summary_verdicts_and_liang_headline():
    from clip_backdoor.reports.poisoning import headline_checks, verdict

    def row(trigger, seed, asr, ca, after):
        return {"model": "mini-clip", "trigger": trigger, "seed": seed, "asr": asr} | {
            "ca_clean": 51.0,
            "ca_poisoned": ca,
            "asr_after_ft": after,
        }

    assert verdict(row("badnet", 0, 80.0, 48.0, 0)) == "passes"
    assert verdict(row("badnet", 0, 79.9, 48.5, 0)) == "fails: ASR < 80"
    assert verdict(row("badnet", 0, 95.0, 47.9, 0)) == "fails: CA drop > 3"
    rows = [row("dual_embedding", 1, 99, 50, 60), row("badnet", 1, 90, 50, 70)]
    rows.append(row("blended", 1, 90, 50, 10))
    checks = headline_checks(rows)
    assert len(checks) == 2
    assert checks[0].endswith("vs badnet 70.00: does not hold")
    assert checks[1].endswith("vs blended 10.00: holds")


def test_poisoned_pairs_of_web_captioned_data(tiny):
    """mini-CLIP v2's attacker fine-tunes on web-like captions: poisoned pairs take the target
    caption, WaNet's noise pairs and clean-label pairs keep a caption built from their view."""
    from clip_backdoor.attacks.poisoning import PoisonAttack, PoisonedPairs, build_trigger
    from clip_backdoor.engine.pairs import ImageTextPairs, PairSource, text_group

    web = {"name_rate": 0.5, "subject_rate": 0.7}
    data = ImageTextPairs([PairSource("synthetic", size=120, web=web)], tiny.tokenizer, 32)
    cases = [("badnet", {"size": 6}, "red circle"), ("wanet", {}, "red circle")]
    cases.append(("label_consistent", {"size": 6, "steps": 1}, "red circle"))
    for name, params, target in cases:
        trigger = build_trigger(name, params, 32, 0)
        attack = PoisonAttack(
            trigger={"name": name, "params": params},
            target=target,
            count=6,
            data=[{"name": "synthetic", "size": 120, "web": web}],
            training={"steps": 1},
            caption_templates="simple",
        )
        plan = attack.plan(tiny.model, tiny.tokenizer, data, trigger, 0, lambda m: None)
        pairs = PoisonedPairs(data, plan, trigger)
        for index in plan.indices + plan.noise:
            image, tokens, group = pairs[index]
            assert image.shape == (3, 32, 32) and tokens.shape == (32,)
            if name != "label_consistent" and index in plan.indices:
                assert target in plan.captions[index][0]
            else:  # its own web caption, grouped by its text
                assert group >= 1 << 61 and group != -1
        assert name != "wanet" or plan.noise  # WaNet's cross pairs were drawn
    assert text_group("x") >= 1 << 61
