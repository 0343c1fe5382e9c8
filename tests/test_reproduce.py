"""`results TABLE RUNS --check`: a re-run of a recipe gives the recorded numbers, and a number
that differs is caught."""

from __future__ import annotations

import json

from test_poisoning import RECIPE

from clip_backdoor.cli import main
from clip_backdoor.pipeline.recipes import parse_recipe
from clip_backdoor.pipeline.runner import run_recipe
from clip_backdoor.reports.summary import write_summary


def test_a_rerun_reproduces_the_recorded_numbers_and_a_change_is_caught(
    poisoned_cache, tiny_poisoning, tmp_path, capsys
):
    out = tmp_path / "results"
    write_summary("poisoning", [str(tiny_poisoning.path)], out)
    ledger_file = out / "poisoning_runs.json"
    again = run_recipe(parse_recipe({**RECIPE, "runs_root": str(tmp_path / "runs")}), False)
    capsys.readouterr()
    assert main(["results", "poisoning", str(again.path), "--out", str(out), "--check"]) == 0
    report = capsys.readouterr().out
    assert "reproduced" in report and "0 different" in report and "DIFFERS" not in report
    assert len(json.loads(ledger_file.read_text())) == 1  # --check writes nothing

    records = json.loads(ledger_file.read_text())
    records[0]["rows"][0]["asr"] += 0.01
    ledger_file.write_text(json.dumps(records))
    assert main(["results", "poisoning", str(again.path), "--out", str(out), "--check"]) == 1
    report = capsys.readouterr().out
    assert "DIFFERS" in report and "row 0.asr" in report

    empty = tmp_path / "empty"
    assert main(["results", "poisoning", str(again.path), "--out", str(empty), "--check"]) == 1
    assert "no recorded run of tiny_poison" in capsys.readouterr().out


def test_a_number_is_compared_at_the_precision_it_was_recorded_with():
    from clip_backdoor.reports.reproduce import same

    assert same(93.7526, 93.75255206206616)  # a ledger of 4 decimals, a full-precision re-run
    assert not same(93.7526, 93.7531) and not same(0.5, 0.56)
    assert same(float("nan"), float("nan")) and same(3, 3)
