"""The Nashville filter trigger: a whole-image colour filter, registered by its file alone, runs
as a poisoning attack in a matrix cell and shows up in the list and the HTML report."""

from __future__ import annotations

import copy

import pytest
import torch
from test_poisoning import RECIPE

from clip_backdoor.cli import main
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.matrix.launch import run_matrix
from clip_backdoor.matrix.spec import parse_matrix
from clip_backdoor.pipeline.recipes import load_recipe
from clip_backdoor.reports.html import write_report
from clip_backdoor.triggers import get


def test_the_filter_warms_every_pixel_alike_and_strength_mixes_it_in():
    nashville = get("nashville")()
    grey = torch.full((1, 3, 8, 8), 0.5)
    out = nashville(grey)
    assert torch.allclose(out, out[..., :1, :1].expand_as(out))  # no position is special
    red, green, blue = out[0, :, 0, 0].tolist()
    assert red > green > blue and red - blue > 0.02  # measured 0.573, 0.550, 0.541
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    full, half = nashville(images), get("nashville")(strength=0.5)(images)
    assert full.min() >= 0 and full.max() <= 1 and (full - images).abs().mean() > 0.03
    assert torch.allclose(half, (images + full) / 2, atol=1e-6)
    with pytest.raises(ConfigError, match="strength must be in"):
        get("nashville")(strength=0)


def test_nashville_is_listed_runs_as_a_matrix_cell_and_is_in_the_report(tmp_path, capsys):
    assert main(["list"]) == 0
    assert "nashville" in capsys.readouterr().out
    assert load_recipe("recipes/poisoning/nashville.yaml").stages[0].params["trigger"]["name"] == (
        "nashville"
    )
    attack = copy.deepcopy(RECIPE["stages"][0])
    attack.pop("kind")
    attack["label"] = "nashville"
    attack["params"]["trigger"] = {"name": "nashville"}
    matrix = {
        "kind": "matrix",
        "name": "nashville_matrix",
        "model": {"name": "mini-tiny"},
        "runs_root": str(tmp_path / "runs"),
        "data": [{"name": "synthetic", "split": "test", "size": 240}],
        "evaluation": {"templates": "simple", "quality": False},
        "matrix": {"attacks": [attack], "defenses": ["none"], "seeds": [0]},
    }
    cells = run_matrix(parse_matrix(matrix, "nashville"), "nashville", log=lambda m: None)
    assert list(cells) == ["nashville--none--s0"]
    page = write_report([str(folder) for folder in cells.values()], tmp_path / "report")
    html = page.read_text()
    assert "nashville" in html and "trigger_nashville" in html
