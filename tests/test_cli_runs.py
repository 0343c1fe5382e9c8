"""Recipes, run folders and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import SHARED_DATASETS

from clip_backdoor.cli import main
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.pipeline.recipes import load_recipe, parse_recipe
from clip_backdoor.pipeline.runner import run_recipe

TINY_RECIPE = {
    "name": "tiny",
    "model": {"name": "mini-tiny"},
    "data": {"name": "synthetic", "split": "test", "size": 48},
    "evaluation": {"templates": "photo", "trigger": {"name": "identity"}, "target": "red circle"},
}


def test_run_writes_a_run_folder_and_never_overwrites(tmp_path):
    recipe = parse_recipe({**TINY_RECIPE, "runs_root": str(tmp_path)})
    first, second = run_recipe(recipe, progress=False), run_recipe(recipe, progress=False)
    assert first.path != second.path and first.path.parent == second.path.parent == tmp_path
    for name in (
        "config.yaml",
        "metrics.json",
        "log.txt",
        "tables/zeroshot.md",
        "tables/zeroshot.csv",
    ):
        assert (first.path / name).is_file(), name
    config = yaml.safe_load((first.path / "config.yaml").read_text())
    assert config["seed"] == 0 and config["versions"]["torch"].startswith("2.13")
    metrics = json.loads((first.path / "metrics.json").read_text())["evaluation"]
    assert metrics == second.metrics["evaluation"]  # same recipe and seed, same numbers
    assert 0.0 <= metrics["ca"] <= 1.0 and metrics["n"] == 48 and metrics["asr_n"] == 44


def test_a_run_folder_goes_on_bad_input_and_stays_with_its_log_on_a_bug(tmp_path):
    from clip_backdoor.core.runs import RunDir

    bad = RunDir.create(tmp_path, "bad")
    with pytest.raises(ConfigError), bad.recording():
        bad.log("half-way")
        raise ConfigError("a field the user can fix")
    assert not bad.path.exists()
    bug = RunDir.create(tmp_path, "bug")
    with pytest.raises(ZeroDivisionError), bug.recording():
        bug.log("half-way")
        _ = 1 / 0
    assert "failed: ZeroDivisionError" in (bug.path / "log.txt").read_text()


def test_unknown_fields_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluation\.batchsize: unknown field"):
        parse_recipe({**TINY_RECIPE, "evaluation": {"batchsize": 3}})
    with pytest.raises(ConfigError, match=r"^recipe: modle: unknown field"):
        parse_recipe({"name": "x", "modle": {"name": "mini"}})
    with pytest.raises(ConfigError, match=r"stages\.0\.method: unknown attack 'badnett'"):
        parse_recipe({"name": "x", "stages": [{"kind": "attack", "method": "badnett"}]})
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata:\n  nmae: cifar10\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: data\.nmae: unknown field"):
        load_recipe(path)
    assert main(["run", str(path)]) == 2


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_shipped_recipes_validate(capsys):
    """``recipe show`` resolves and validates every recipe as ``run`` would (a matrix: every
    cell; a paper's recipe: its smoke too), and prints what runs: no ``from:`` left."""
    from pathlib import Path

    root = Path(__file__).parents[1] / "recipes"
    recipes = [p for p in sorted(root.glob("**/*.yaml")) if p.name != "targets.yaml"]
    assert len(recipes) >= 100
    matrices = []
    for path in recipes:
        assert main(["recipe", "show", str(path)]) == 0, path
        shown = yaml.safe_load(capsys.readouterr().out)
        assert "from" not in _keys(shown), path
        if shown.get("kind") == "matrix":
            assert shown["cells"]
            matrices.append(path.name)
        if "smoke" in yaml.safe_load(path.read_text()):  # and its smoke, as `run --smoke`
            assert main(["recipe", "show", str(path), "--smoke"]) == 0
            smoke = yaml.safe_load(capsys.readouterr().out)
            assert smoke["device"] == "cpu" and smoke["model"]["pretrained"] is None
    assert sorted(matrices) == ["matrix.yaml", "mini.yaml"]  # v2's: `from: matrix/mini.yaml`
    assert main(["recipe", "show", str(root / "targets.yaml")]) == 2  # bars, not a recipe
    papers = {p.parent.name for p in recipes if "papers" in p.parts}
    assert papers == {"bai", "liang", "rvpt", "he"}


def test_smoke_runs_the_recipes_stages_shortened_and_refuses_a_recipe_without_one(tmp_path, capsys):
    """`run --smoke`: the recipe's own smoke section replaces its keys and its stages' params;
    the weights are left untrained; a recipe with no smoke section is one line, exit 2."""
    recipe = {
        "name": "paper_like",
        "device": "cuda",
        "runs_root": str(tmp_path / "runs"),
        "model": {"name": "tiny-vit", "pretrained": "nonexistent-tag"},
        "data": [{"name": "caltech101", "split": "test"}],
        "evaluation": {"templates": "simple", "quality": False},
        "stages": [
            {
                "kind": "defense",
                "method": "ft",
                "label": "ft",
                "params": {
                    "data": [{"name": "caltech101"}],
                    "fraction": 0.2,
                    "training": {"epochs": 5, "batch_size": 64, "lr": 1e-5},
                },
            }
        ],
        "smoke": {
            "data": [{"name": "synthetic", "split": "test", "size": 16}],
            "stages": {
                "ft": {
                    "data": [{"name": "synthetic", "size": 32}],
                    "fraction": 0.5,
                    "training": {"epochs": 1, "batch_size": 8, "precision": "fp32"},
                }
            },
        },
    }
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--smoke"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["name"] == "paper_like_smoke" and config["model"]["pretrained"] is None
    assert config["device"] == "cpu"  # no CUDA here
    assert config["stages"][0]["params"]["training"]["epochs"] == 1
    assert config["stages"][0]["params"]["training"]["lr"] == 1e-5  # the paper's, kept
    capsys.readouterr()
    del recipe["smoke"]
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no 'smoke' section" in err and len(err.splitlines()) == 1


def test_run_takes_a_matrix_written_as_from_another(capsys):
    """recipes/v2/matrix.yaml inherits `kind: matrix` through `from:`; `run` must see it."""
    assert main(["run", "recipes/v2/matrix.yaml", "--cells", "nothing"]) == 2
    assert "matches none of the 66 cells of v2_matrix" in capsys.readouterr().err


def test_console_script_help_lists_commands():
    result = subprocess.run(
        [sys.executable, "-m", "clip_backdoor", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ("run", "eval", "list", "scan"):
        assert f"    {command} " in result.stdout


def test_results_takes_run_folders_after_an_option(tmp_path, capsys):
    """``results ablation --fresh RUN...``: the folders after the option are runs too (argparse
    alone would call them unrecognised); an unknown option is still an error."""
    missing = tmp_path / "no-such-run"
    assert main(["results", "ablation", "--fresh", str(missing), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "no-such-run" in error and "unrecognized" not in error
    with pytest.raises(SystemExit):
        main(["results", "ablation", "--bogus", str(missing)])


@pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="../shared/datasets not present")
def test_eval_on_cifar10_writes_a_run_folder(tmp_path, capsys):
    code = main(
        [
            "eval",
            "--model",
            "mini-tiny",
            "--data",
            str(SHARED_DATASETS / "cifar10"),
            "--split",
            "test",
            "--templates",
            "photo",
            "--runs-root",
            str(tmp_path),
        ]
    )
    assert code == 0
    (run,) = tmp_path.iterdir()
    metrics = json.loads((run / "metrics.json").read_text())["evaluation"]
    assert metrics["n"] == 2000 and 0.0 < metrics["ca"] < 0.3  # random init: near chance (0.1)
    row = f"| mini-tiny | {metrics['weights']} | cifar10 | test | 10 | 2000 |"
    assert row in capsys.readouterr().out


def test_a_results_line_names_the_cpu_and_precision_of_its_run(tmp_path):
    """A results table mixes runs of several machines; fp32 (AVX2) and bf16 (AMX) runs of one
    recipe differ in their last digits, so each provenance line says which precision ran."""
    from clip_backdoor.reports.summary import run_record

    for precision in ("fp32", "bf16"):
        recipe = parse_recipe(
            {
                **TINY_RECIPE,
                "runs_root": str(tmp_path / precision),
                "evaluation": {**TINY_RECIPE["evaluation"], "precision": precision},
            }
        )
        folder = run_recipe(recipe, progress=False).path
        source = run_record("scan", folder)["source"]  # no scan stage: no rows, a line
        assert source.endswith(f", {precision}") and ", commit `" in source
