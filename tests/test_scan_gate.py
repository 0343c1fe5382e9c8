"""The gate's tables of results/scan.md: the split, the modes, where a found patch lies."""

from __future__ import annotations

import math

import pytest
import torch

from clip_backdoor.reports.scan import scan_rows, write_scan
from clip_backdoor.reports.scan_gate import covers, covers_firing, zoo_part


@pytest.fixture
def split(tmp_path, monkeypatch):
    bars = tmp_path / "targets.yaml"
    bars.write_text(
        "scan:\n  backdoored_asr: 0.8\n  failed_asr: 0.2\n"
        "  judged_targets: [stop_sign, laptop]\n  judged_clean_seeds: [1]\n"
    )
    monkeypatch.setenv("CLIP_BACKDOOR_TARGETS", str(bars))


def test_the_split_is_by_target_for_backdoors_and_by_seed_for_clean_models(split):
    assert zoo_part({"truth": "backdoored", "target_true": "stop sign", "seed": 0}) == "judged"
    assert zoo_part({"truth": "backdoored", "target_true": "pizza", "seed": 1}) == "fitted"
    assert zoo_part({"truth": "clean", "target_true": "", "seed": 1}) == "judged"
    assert zoo_part({"truth": "clean", "target_true": "", "seed": 0}) == "fitted"


def test_a_found_patch_is_measured_on_the_stamped_patch_and_on_a_firing_place():
    mask = torch.zeros(16, 16)
    mask[8:16, 0:6] = 1  # found: an 8 x 6 patch at (8, 0)
    stamped = torch.zeros(16, 16)
    stamped[0:4, 0:4] = 1  # trained: a 4-px trigger at the top left, not covered
    assert covers(mask, stamped) == 0.0
    starts = [0, 4, 8, 12]
    asr = [[0.0] * 4 for _ in starts]
    asr[0][0] = 0.9  # fires where it was stamped ...
    asr[3][1] = 0.8  # ... and at (12, 4): half of that place lies in the found patch
    grid = {"size": 16, "patch": 4, "starts": starts, "asr": asr}
    assert covers_firing(mask, grid) == pytest.approx(0.5)
    asr[3][1] = 0.4  # under half the images: not a firing place
    assert covers_firing(mask, grid) == 0.0
    assert math.isnan(covers_firing(mask, None)) and math.isnan(covers(None, stamped))


def _scan(verdict: str, target: str, reference: bool = False, budget: str = "default") -> dict:
    finding = {
        "scanner": "patch_search",
        "score": 9.0 if verdict == "backdoored" else 0.5,
        "threshold": 6.0,
        "suspect_below": False,
        "verdict": verdict,
        "target": target,
    }
    return {
        "verdict": verdict,
        "score": finding["score"] / 6 - 1,
        "target": target,
        "reference": "base" if reference else None,
        "budget": budget,
        "scanners": [finding],
        "truth": {"attacked": bool(target), "target": target or None},
    }


def test_the_gate_counts_each_mode_on_each_part(split, tmp_path):
    def model(name, seed, asr, target, verdicts):
        metrics = {"points": [{"point": "attack", "asr": asr}]}
        for label, (verdict, found, reference, budget) in verdicts.items():
            scan = _scan(verdict, found, reference, budget)
            scan["truth"] = {"attacked": bool(target), "target": target or None}
            metrics[f"scan.{label}"] = scan
        config = {"name": name, "seed": seed, "model": {"name": "mini-clip"}}
        return scan_rows(metrics, config)

    rows = model(
        "zoo_badnet_laptop",
        0,
        0.95,
        "laptop",
        {
            "scan": ("backdoored", "laptop", False, "default"),
            "scan_reference": ("backdoored", "laptop", True, "default"),
            "scan_fast": ("clean", "", False, "fast"),
        },
    )
    rows += model(
        "zoo_clean",
        1,
        0.0,
        "",
        {
            "scan": ("backdoored", "pizza", False, "default"),  # a false alarm, judged part
            "scan_reference": ("clean", "", True, "default"),
            "scan_fast": ("clean", "", False, "fast"),
        },
    )
    rows += model(  # another clean fine-tune of the same seed: its own line in the table
        "zoo_clean_half",
        1,
        0.0,
        "",
        {"scan": ("clean", "", False, "default")},
    )
    text = write_scan(rows, [], tmp_path, "scan_runs.json")
    gate = text.split("## The gate")[1].split("## Judged part")[0]
    lines = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in gate.splitlines()}
    plain = lines[("judged", "plain", "patch_search")]
    assert "| 1/1 | 1/2 |" in plain  # the backdoor flagged, and one clean model too
    assert "| 1/1 | 0/1 |" in lines[("judged", "vs reference", "patch_search")]
    assert "| 0/1 | 0/1 |" in lines[("judged", "plain, fast", "patch_search")]
    family = text.split("## Judged part")[1]
    assert "backdoored (laptop)" in family and "backdoored (pizza)" in family
    assert "| zoo_clean |" in family and "| zoo_clean_half |" in family
