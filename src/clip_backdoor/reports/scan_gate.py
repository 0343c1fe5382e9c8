"""The gate's tables in ``results/scan.md``: the calibrated verdicts on the varied zoo's judged
part, per mode (plain, against the public base, under ``--budget fast``), and per trigger family
and target, with where each found patch lies.

The split is the zoo's, fixed before any score (``recipes/zoo/varied/README.md``) and read from
``recipes/targets.yaml`` (``scan.judged_targets``, ``scan.judged_clean_seeds``): nothing here is
fitted, the section only counts. Where a patch lies is judged two ways: the share of the true
(stamped) patch the found mask covers, and the best share of one *firing place* it covers (a
place of the ``where_it_fires`` grid where the model's own trigger reaches >= 50%): a ViT may
read its trigger at many places, the stamped one among them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from clip_backdoor.reports.common import markdown_table
from clip_backdoor.reports.targets import targets

FIRES = 0.5  # a grid place where the model's own trigger reaches this share fires


def _name(target: str) -> str:
    return target.replace("_", " ").strip().lower()


def zoo_part(row: dict) -> str:
    """``judged`` or ``fitted`` by the zoo's split; ``-`` where targets.yaml has none."""
    bars = targets("scan")
    judged = {_name(t) for t in bars.get("judged_targets", [])}
    if not judged:
        return "-"
    if row["truth"] == "clean":
        return "judged" if row["seed"] in bars.get("judged_clean_seeds", []) else "fitted"
    return "judged" if _name(row.get("target_true") or "") in judged else "fitted"


def found_mask(scan_folder: Path, scanner: str) -> torch.Tensor | None:
    """(H, W) the scanner's inverted mask, if it saved one."""
    from safetensors.torch import load_file

    from clip_backdoor.scanning.report import INVERTED_FILE

    path = scan_folder / INVERTED_FILE
    if not path.is_file():
        return None
    mask = load_file(str(path)).get(f"{scanner}.mask")
    return None if mask is None else mask[0].float()


def covers(mask: torch.Tensor | None, region: torch.Tensor | None) -> float:
    """The share of ``region`` (the stamped patch) the mask covers."""
    if mask is None or region is None or mask.shape != region.shape:
        return math.nan
    return float((mask * region).sum() / region.sum().clamp_min(1))


def covers_firing(mask: torch.Tensor | None, grid: dict | None) -> float:
    """The largest share of one firing place's patch the mask covers (nan: no map)."""
    if mask is None or not grid or mask.shape[-1] != grid["size"]:
        return math.nan
    side, starts = grid["patch"], grid["starts"]
    best = 0.0
    for i, r in enumerate(starts):
        for j, c in enumerate(starts):
            if grid["asr"][i][j] >= FIRES:
                best = max(best, float(mask[r : r + side, c : c + side].mean()))
    return best


def _mode_of(row: dict) -> tuple[str, str]:
    """(scanner, mode): the scanner's name, and plain / vs reference, with ``fast`` added for
    a scan under ``--budget fast``."""
    return row.get("scanner_name", row["scanner"]), row.get("mode", "plain")


def gate_section(rows: list[dict], auroc) -> str:
    """Per scanner and mode, on each part of the split: flagged backdoors (ASR >= 80%),
    flagged clean models, AUROC, the target named right, the patch found on the trigger."""
    rows = [r for r in rows if r.get("part") in ("judged", "fitted")]
    if not rows:
        return ""
    bars = targets("scan")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        scanner, mode = _mode_of(r)
        groups.setdefault((r["part"], mode, scanner), []).append(r)
    body = []
    for (part, mode, scanner), part_rows in sorted(groups.items(), key=lambda kv: kv[0]):
        positives = [r for r in part_rows if r["truth"] == "backdoored"]
        negatives = [r for r in part_rows if r["truth"] == "clean"]
        flagged = [r for r in positives if r["verdict"] == "backdoored"]
        false = [r for r in negatives if r["verdict"] == "backdoored"]
        right = [r for r in flagged if _name(r["target_found"]) == _name(r["target_true"])]
        placed = [r["covers_firing"] for r in positives if np.isfinite(r["covers_firing"])]
        body.append(
            [
                part,
                mode,
                scanner,
                f"{len(flagged)}/{len(positives)}",
                f"{len(false)}/{len(negatives)}",
                auroc(part_rows),
                f"{len(right)}/{len(flagged)}",
                f"{sum(p >= 0.5 for p in placed)}/{len(placed)}" if placed else "-",
            ]
        )
    return (
        "\n\n## The gate: calibrated verdicts by part of the split\n\n"
        f"The zoo is split by target before any score (judged targets: "
        f"{', '.join(bars.get('judged_targets', []))}; clean models of seed "
        f"{', '.join(map(str, bars.get('judged_clean_seeds', [])))}); nothing is fitted on either "
        "part (each verdict is the scanner's own, at its stated false-alarm rate). Flagged: the "
        "verdict `backdoored`; targets: the suspected class is the true one; on a firing place: "
        "the found patch covers at least half of a place where the model's own trigger fires "
        "(patch backdoors with a `where_it_fires` map).\n\n"
        + markdown_table(
            [
                "part",
                "mode",
                "scanner",
                "flagged backdoored (ASR >= 80%)",
                "flagged clean",
                "AUROC",
                "target right",
                "on a firing place",
            ],
            body,
        )
    )


def family_section(rows: list[dict]) -> str:
    """The judged part, one line per model (by its recipe name): each mode's verdict and
    named target, and where the found patch lies."""
    judged = [r for r in rows if r.get("part") == "judged" and r["scanner"].startswith("combined")]
    if not judged:
        return ""
    lines: dict[tuple, dict[str, str]] = {}
    places: dict[tuple, list[str]] = {}
    for r in rows:
        if r.get("part") != "judged":
            continue
        member = r["model"].split("/")[-1]  # two clean fine-tunes share attack and seed
        key = (member, r["attack"], r["target_true"] or "-", r["seed"], r["asr"], r["truth"])
        scanner, mode = _mode_of(r)
        if scanner == "combined":
            named = f" ({r['target_found']})" if r["verdict"] == "backdoored" else ""
            lines.setdefault(key, {})[mode] = r["verdict"] + named
        elif np.isfinite(r.get("covers_firing", math.nan)) and mode == "plain":
            places.setdefault(key, []).append(
                f"{scanner}: {r['covers_trigger']:.2f} / {r['covers_firing']:.2f}"
            )
    modes = sorted({m for v in lines.values() for m in v})
    body = [
        [*key, *(v.get(m, "-") for m in modes), "; ".join(places.get(key, [])) or "-"]
        for key, v in sorted(lines.items(), key=lambda kv: tuple(map(str, kv[0])))
    ]
    return (
        "\n\n## Judged part, per trigger family and target\n\n"
        "Each mode's combined verdict (the suspected target in brackets where flagged); where "
        "the found patch lies: the share of the stamped patch it covers / of the best firing "
        "place.\n\n"
        + markdown_table(
            [
                "model",
                "attack",
                "target",
                "seed",
                "ASR %",
                "truth",
                *modes,
                "patch: stamped / firing",
            ],
            body,
        )
    )
