"""Linear probe, Perturbation Resistivity, defenses compared from one model, stage includes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from clip_backdoor.analysis.resistivity import MAIN, PERTURBATIONS, noise_patch
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.pipeline.recipes import load_recipe, parse_recipe
from clip_backdoor.pipeline.runner import run_recipe


def _recipe(tmp_path, model, stages, **evaluation) -> dict:
    return {
        "name": "tools",
        "seed": 0,
        "runs_root": str(tmp_path / "runs"),
        "model": {"name": str(model)},
        "data": [{"name": "synthetic", "split": "test", "size": 240}],
        "evaluation": {"templates": "simple", **evaluation},
        "stages": stages,
    }


PROBE = {
    "kind": "defense",
    "method": "linear_probe",
    "params": {"train": {"name": "synthetic", "size": 480, "shots": 16}},
}


def test_noise_patch_changes_one_square_of_the_scaled_size():
    images = torch.full((4, 3, 64, 64), 0.5)
    out = noise_patch(images, torch.Generator().manual_seed(0))
    changed = (out != images).any(dim=1)
    side = round(16 * 64 / 224)
    assert side == 5
    assert all(int(c.sum()) == side * side for c in changed)
    assert MAIN in PERTURBATIONS and len(PERTURBATIONS) == 7


@pytest.mark.slow  # pretrains a tiny CLIP (41 s) for one probe
def test_linear_probe_and_resistivity_on_a_trained_tiny_clip(synthetic_clip, tmp_path, monkeypatch):
    import clip_backdoor.pipeline.points as points

    measured = []
    real = points.perturbation_resistivity
    monkeypatch.setattr(
        points, "perturbation_resistivity", lambda *a, **k: measured.append(1) or real(*a, **k)
    )
    recipe = _recipe(tmp_path, synthetic_clip, [PROBE], resistivity=64)
    result = run_recipe(parse_recipe(recipe), progress=False)
    clean, probe = result.metrics["points"]
    # the probe reads raw features of 16 shots per class (12 classes: chance 0.08); this tiny
    # CLIP's raw features separate the classes only partly (train accuracy measured 0.67)
    assert probe["ca"] >= 0.45, probe  # measured 0.60
    assert result.metrics["defense.linear_probe"]["train_accuracy"] >= 0.55
    for point in (clean, probe):
        assert set(point["pr_all"]) == set(PERTURBATIONS)
        assert all(0 < value < 2 for value in point["pr_all"].values()), point["pr_all"]
        assert point["pr"] == point["pr_all"][MAIN]
    assert clean["pr"] != probe["pr"]  # the probe's logits are not the text classifier's
    assert (result.path / "figures" / "resistivity.png").is_file()
    assert (result.path / "artifacts" / "linear_probe" / "probe.safetensors").is_file()
    assert not math.isnan(clean["pr"])

    # a second run takes the text classifier's PR from the feature cache, to the same numbers
    first = len(measured)
    again = run_recipe(parse_recipe(recipe), progress=False).metrics["points"]
    assert len(measured) - first < first
    assert [p["pr_all"] for p in again] == [p["pr_all"] for p in (clean, probe)]


def test_a_probe_refuses_other_classes_and_leaves_nothing(synthetic_clip, tmp_path):
    recipe = _recipe(tmp_path, synthetic_clip, [PROBE])
    recipe["data"].append({"name": "synthetic", "split": "test", "size": 24, "classes": "base"})
    with pytest.raises(ConfigError, match="other classes than its training set"):
        run_recipe(parse_recipe(recipe), progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_defenses_in_a_row_each_start_from_the_same_model(synthetic_clip, tmp_path):
    """FT trains in place; the probe after it must still see the model before FT."""
    ft = {
        "kind": "defense",
        "method": "ft",
        "params": {
            "data": [{"name": "synthetic", "split": "train", "size": 96, "templates": "simple"}],
            "fraction": 1.0,
            "cache": False,
            "training": {"steps": 4, "batch_size": 24, "lr": 1e-2, "warmup_steps": 1},
        },
    }
    stacked = {**PROBE, "label": "probe_after_ft", "stack": True}
    result = run_recipe(
        parse_recipe(_recipe(tmp_path, synthetic_clip, [ft, stacked, PROBE])), progress=False
    )
    clean, after_ft, probe_after_ft, probe = result.metrics["points"]
    assert after_ft["weights"] != clean["weights"]
    assert probe_after_ft["weights"] == after_ft["weights"]  # stack: on FT's result
    assert probe["weights"] == clean["weights"]  # restarted from the model before FT


def test_a_stage_included_from_another_recipe(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(
        "name: other\nstages:\n  - {kind: defense, method: linear_probe, label: lp, "
        "params: {epochs: 3}}\n"
    )
    recipe = parse_recipe(
        {"name": "x", "stages": [{"from": str(other), "stage": "lp", "evaluate": False}]}
    )
    (stage,) = recipe.stages
    assert (stage.method, stage.params, stage.evaluate) == ("linear_probe", {"epochs": 3}, False)
    params = {"epochs": 5, "lr": 0.1}  # params given replace the included ones key by key
    recipe = parse_recipe(
        {"name": "x", "stages": [{"from": str(other), "stage": "lp", "params": params}]}
    )
    assert recipe.stages[0].params == {"epochs": 5, "lr": 0.1}
    with pytest.raises(ConfigError, match="has no stage labelled 'nope'"):
        parse_recipe({"name": "x", "stages": [{"from": str(other), "stage": "nope"}]})

    # a label wins over an earlier stage of that method; includes of includes resolve
    other.write_text(
        "name: other\nstages:\n"
        "  - {kind: defense, method: linear_probe, label: lp_short, params: {epochs: 1}}\n"
        "  - {kind: defense, method: linear_probe, label: linear_probe, params: {epochs: 3}}\n"
    )
    third = tmp_path / "third.yaml"
    third.write_text(f"name: third\nstages:\n  - {{from: {other}, stage: linear_probe}}\n")
    for source in (other, third):
        recipe = parse_recipe(
            {"name": "x", "stages": [{"from": str(source), "stage": "linear_probe"}]}
        )
        assert recipe.stages[0].params == {"epochs": 3}


def test_a_whole_recipe_included_with_another_model(tmp_path, monkeypatch):
    base = tmp_path / "base.yaml"
    base.write_text(
        "name: base\nseed: 3\nmodel: {name: mini-tiny}\nevaluation: {templates: photo}\n"
        "stages:\n  - {kind: defense, method: linear_probe, label: lp, params: {epochs: 3}}\n"
    )
    again = tmp_path / "again.yaml"
    again.write_text(f"from: {base}\nname: again\nmodel: {{name: mini}}\n")
    recipe = parse_recipe(
        {"from": str(again), "name": "v2", "seed": 4}, "v2.yaml"
    )  # includes of includes resolve, the later keys win
    assert (recipe.name, recipe.seed, recipe.model.name) == ("v2", 4, "mini")
    assert recipe.evaluation.templates == "photo" and recipe.stages[0].params == {"epochs": 3}
    base.write_text(f"from: {again}\nname: base\n")
    with pytest.raises(ConfigError, match="included from each other in a loop"):
        parse_recipe({"from": str(again), "name": "x"})
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # includes name paths from the root
    from clip_backdoor.matrix.spec import is_matrix, parse_matrix
    from clip_backdoor.pipeline.recipes import included_recipe, read_yaml

    for path in sorted(Path("recipes/v2").glob("*.yaml")):  # the committed v2 recipes parse
        data = included_recipe(read_yaml(path), str(path))
        matrix = is_matrix(data)  # recipes/v2/matrix.yaml: a grid, not one run
        recipe = parse_matrix(data, str(path)) if matrix else load_recipe(path)
        assert recipe.model.name == "mini-clip-v2" and "v2" in recipe.name  # its own runs


def test_an_ablation_table_finds_the_varied_parameter_and_draws_it(tmp_path):
    from clip_backdoor.reports.ablation import ablation_rows, write_ablations

    def stage(label, shots):
        params = {"train": {"name": "caltech101", "shots": shots}, "alpha": 2.0}
        return {"kind": "defense", "method": "rvpt", "label": label, "params": params}

    config = {
        "name": "rvpt_ablation_shots",
        "seed": 3,
        "stages": [{"kind": "attack", "method": "poison"}, stage("s1", 1), stage("s4", 4)],
    }
    point = {"data": "caltech101"}
    metrics = {
        "points": [
            {**point, "point": "clean", "kind": "clean", "ca": 0.6, "asr": 0.01},
            {**point, "point": "attack", "kind": "attack", "ca": 0.5, "asr": 0.9},
            {**point, "point": "s1", "kind": "defense", "ca": 0.3, "asr": 0.7},
            {**point, "point": "s4", "kind": "defense", "ca": 0.4, "asr": 0.2},
        ]
    }
    rows = ablation_rows(metrics, config)
    assert [(r["defense"], r["parameter"], r["value"]) for r in rows] == [
        ("none", "train.shots", ""),
        ("s1", "train.shots", "1"),
        ("s4", "train.shots", "4"),
    ]
    assert rows[2]["asr"] == pytest.approx(20.0) and rows[2]["seed"] == 3
    write_ablations(rows, ["- `run`: recipe `recipes/defenses/ablation_shots.yaml`"], tmp_path, "x")
    assert (tmp_path / "ablation_rvpt_ablation_shots.png").stat().st_size > 1000
    lines = (tmp_path / "ablation_rvpt_ablation_shots.csv").read_text().splitlines()
    assert lines[0] == "model,ablation,defense,parameter,value,ca,asr,seed" and len(lines) == 4
    assert lines[1].startswith("?,rvpt_ablation_shots,none,")  # the config names no model


def test_a_dual_key_trigger_on_a_learned_head_is_measured_with_its_image_key(
    synthetic_clip, tmp_path
):
    """TrojVQA's text key goes into the class prompts; a linear probe has none, so after it the
    ASR is the image key's alone, said in the point (it crashed with two classifiers)."""
    trigger = {"name": "trojvqa", "params": {}}
    recipe = _recipe(tmp_path, synthetic_clip, [PROBE], trigger=trigger, target=0)
    clean, probe = run_recipe(parse_recipe(recipe), progress=False).metrics["points"]
    assert "asr_image_key_only" in clean and "text_key" not in clean
    assert probe["text_key"].startswith("not applicable") and 0 <= probe["asr"] <= 1
