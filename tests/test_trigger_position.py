"""The trigger-position analysis: the same patch pasted elsewhere, measured as ASR."""

from __future__ import annotations

import copy

import pytest
import torch
from test_poisoning import RECIPE as POISON_RECIPE

from clip_backdoor.analysis.trigger_position import moved
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.pipeline.recipes import parse_recipe
from clip_backdoor.pipeline.runner import run_recipe
from clip_backdoor.triggers import get as get_trigger


def test_a_moved_trigger_keeps_its_patch_and_changes_only_where_it_lands():
    trigger = get_trigger("badnet")(image_size=32, size=6, position="bottom_right", seed=3)
    grey = torch.full((2, 3, 32, 32), 0.5)
    there = moved(trigger, "top_left")(grey)
    assert torch.equal(there[:, :, :6, :6], trigger(grey)[:, :, -6:, -6:])  # the same patch
    assert torch.equal(there[:, :, 6:, :], grey[:, :, 6:, :])  # nothing else touched
    assert trigger.params["position"] == "bottom_right"  # the original is left as it was
    with pytest.raises(ConfigError, match="has none"):
        moved(get_trigger("blended")(image_size=32), "top_left")


def test_trigger_position_runs_after_a_tiny_attack(poisoned_cache, tmp_path):
    data = copy.deepcopy(POISON_RECIPE)
    data["runs_root"] = str(tmp_path / "runs")
    data["evaluation"] = {**data["evaluation"], "quality": False}
    positions = ["bottom_right", "top_left", "center"]
    data["stages"].append(
        {"kind": "analysis", "method": "trigger_position", "params": {"positions": positions}}
    )
    result = run_recipe(parse_recipe(data), progress=False)
    found = result.metrics["analysis.trigger_position"]
    assert found["trained"] == "bottom_right" and list(found["asr"]) == positions
    attacked = next(p for p in result.metrics["points"] if p["point"] == "poison")
    # at its own place the moved trigger is the attack's trigger: the same ASR, measured again
    assert found["asr"]["bottom_right"] == pytest.approx(attacked["asr"])
    assert all(0.0 <= v <= 1.0 for v in found["asr"].values())
    assert (result.path / "tables" / "trigger_position_trigger_position.csv").is_file()


def test_an_unknown_position_is_one_line_before_anything_runs(tmp_path):
    data = copy.deepcopy(POISON_RECIPE)
    data["runs_root"] = str(tmp_path / "runs")
    data["stages"].append(
        {"kind": "analysis", "method": "trigger_position", "params": {"positions": ["left"]}}
    )
    with pytest.raises(ConfigError, match="unknown trigger position"):
        run_recipe(parse_recipe(data), progress=False)
    assert not (tmp_path / "runs").exists()


def test_the_scan_table_shows_each_models_asr_at_each_position():
    from clip_backdoor.reports.scan import position_section

    found = {"trained": "bottom_right", "asr": {"bottom_right": 0.9375, "top_left": 0.125}}
    rows = [
        {"model": "m/badnet", "attack": "badnet", "seed": 0, "trigger_position": found},
        {"model": "m/badnet", "attack": "badnet", "seed": 0, "trigger_position": found},
        {"model": "m/clean", "attack": "none", "seed": 0, "trigger_position": None},
    ]
    text = position_section(rows)
    (line,) = [row for row in text.splitlines() if row.startswith("| m/badnet")]
    assert "bottom_right" in line and "93.75" in line and "12.5" in line
    assert "m/clean" not in text and position_section(rows[2:]) == ""


def test_the_grid_maps_where_a_tiny_backdoor_fires(poisoned_cache, tmp_path):
    """The grid's place flush with the bottom right is the attack's own place: the attack's
    trigger fires there, and the map is a (rows x cols) table of shares with its figure."""
    data = copy.deepcopy(POISON_RECIPE)
    data["runs_root"] = str(tmp_path / "runs")
    data["evaluation"] = {**data["evaluation"], "quality": False}
    params = {"positions": ["bottom_right"], "grid": 8, "grid_images": 16}
    data["stages"].append({"kind": "analysis", "method": "trigger_position", "params": params})
    result = run_recipe(parse_recipe(data), progress=False)
    found = result.metrics["analysis.trigger_position"]["grid"]
    starts, asr = found["starts"], found["asr"]
    assert starts[-1] == found["size"] - found["patch"] and len(asr) == len(starts)
    assert all(len(row) == len(starts) and all(0 <= a <= 1 for a in row) for row in asr)
    assert asr[-1][-1] >= 0.75  # the trained place; the attack's ASR there is over 90%
    assert (result.path / "figures" / "trigger_position_trigger_position.png").is_file()
