"""Every method that applies runs on a tiny model of every CLIP family; `clip-backdoor info`.

The family matrix is the compatibility table's source (`clip-backdoor compat` runs the same
``run_family``). `make test` runs two families whose loading, tokenizer and objective differ
most from the open_clip ViT the rest of the suite uses (open_clip SigLIP, transformers SigLIP);
`make compat` runs all eleven and rewrites the table (a few minutes on 2 cores).
"""

from __future__ import annotations

import json

import pytest

from clip_backdoor.cli import main
from clip_backdoor.compat.methods import ENCODE_LEVEL
from clip_backdoor.compat.table import run_family
from clip_backdoor.models.families import FAMILIES

IN_SUITE = {"tiny-siglip", "tiny-hf-siglip"}


@pytest.mark.parametrize(
    "tiny",
    [
        pytest.param(f.tiny, marks=() if f.tiny in IN_SUITE else pytest.mark.families)
        for f in FAMILIES
    ],
)
def test_every_encode_level_method_runs(tmp_path, tiny):
    result = run_family(tiny, tmp_path / "runs")
    assert result.error is None, f"{result.failed_stage}: {result.error}"
    for method in ENCODE_LEVEL:
        assert result.cells[method.name] == "runs", method.name
    for method, cell in result.cells.items():  # tower-level: runs, or says why not
        assert cell == "runs" or cell.startswith("does not apply"), (method, cell)
    # the run is a real one: a run folder with the metrics of every stage, and its report
    metrics = json.loads((result.run / "metrics.json").read_text())
    assert len(metrics["stage_seconds"]) == len(ENCODE_LEVEL) - 3  # eval, matrix, report: none
    assert (result.run / "report" / "index.html").is_file()


def test_info_names_the_family_objective_and_what_applies(capsys):
    assert main(["info", "tiny-hf-siglip", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "transformers SigLIP"
    assert info["objective"] == "sigmoid" and info["logit_bias"] is not None
    assert info["normalisation"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert info["methods"]["strip"] == "applies"
    assert info["methods"]["vpt"] == "applies"  # the HF vision tower takes prompts
    assert info["methods"]["decomp_rep"] == "applies"  # its attention pool is split too
    assert main(["info", "tiny-rn"]) == 0
    text = capsys.readouterr().out
    assert "family          RN50" in text and "objective       infonce" in text
    assert "does not apply: RN50 is convolutional" in text
