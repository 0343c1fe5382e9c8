"""``results/decomposition.md``, ``detection.csv``, ``repair.csv`` and the heat maps (He et al.).

From runs of ``recipes/decomposition/vs_<attack>.yaml``: per attack, every detector's AUROC and
TPR at 5% FPR on the same inputs (``attack,detector,auroc,tpr_at_5fpr,seed``), every repair's CA
and ASR (``attack,defense,ca,asr,seed``, ``none`` the undefended model), and where the flags fall
(per layer/head and MLP, clean vs triggered), redrawn as ``decomposition_<attack>_<label>.png``.
Layout ours (docs/methods.md 7: He et al. publish none).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from clip_backdoor.analysis.head_heatmaps import flag_rate_figure
from clip_backdoor.reports.common import Table, config_model, markdown_table, provenance, write_csv
from clip_backdoor.reports.defenses import attack_label
from clip_backdoor.reports.targets import targets

DETECTION_COLUMNS = ["model", "attack", "detector", "auroc", "tpr_at_5fpr", "seed"]
REPAIR_COLUMNS = ["model", "attack", "defense", "ca", "asr", "seed"]


def decomposition_rows(metrics: dict, config: dict, label_of) -> list[dict]:
    attack, seed = attack_label(config, label_of), config.get("seed")
    model = config_model(config)
    rows = []
    for key, value in metrics.items():
        if not key.startswith("detection."):
            continue
        row = {"table": "detection", "model": model, "attack": attack}
        row["detector"] = key.split(".", 1)[1]
        row.update(auroc=value["auroc"], seed=seed, auroc_successful=value.get("auroc_successful"))
        if math.isclose(value.get("target_fpr", 0.05), 0.05):
            row["tpr_at_5fpr"] = value["tpr_at_fpr"]
        for name in ("filter_fpr", "filter_tpr", "asr_before_filter", "asr_after_filter"):
            row[name] = value.get(name)
        row["images"] = value.get("n_clean")
        rows.append(row)
        if "flag_rates" in value:
            rows.append(
                {
                    "table": "flags",
                    "attack": attack,
                    "detector": row["detector"],
                    "seed": seed,
                    "model": model,
                    "rates": value["flag_rates"],
                }
            )
    for point in metrics.get("points", []):
        if point["kind"] not in ("attack", "defense") or "asr" not in point:
            continue
        rows.append(
            {
                "table": "repair",
                "attack": attack,
                "defense": "none" if point["kind"] == "attack" else point["point"],
                "ca": 100 * float(point["ca"]),
                "asr": 100 * float(point["asr"]),
                "seed": seed,
                "model": model,
                "images": point["n"],
            }
        )
    return rows


def _fmt(value, digits: int = 3) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def _top_flags(rates: dict, count: int = 3) -> str:
    """The components flagged most often on triggered inputs, with their clean rate."""
    cells = []
    for part in ("heads", "mlps"):
        triggered = np.asarray(rates["triggered"][part])
        clean = np.asarray(rates["clean"][part])
        for index in np.ndindex(triggered.shape):
            name = f"L{index[0]}H{index[1]}" if part == "heads" else f"MLP{index[0]}"
            cells.append((triggered[index], clean[index], name))
    cells.sort(reverse=True)
    return ", ".join(f"{n} {t:.2f} ({c:.2f})" for t, c, n in cells[:count])


def _case(row: dict) -> tuple:
    """What one verdict is about: a poisoned model (measuring model, attack, seed)."""
    return (row["model"], row["attack"], row["seed"])


def verdicts(repairs: list[dict], detections: list[dict]) -> list[str]:
    """Repairs and detectors against the targets' bars (recipes/targets.yaml, decomposition);
    none without them."""
    bars = targets("decomposition")
    if not bars:
        return []
    repair_asr = bars.get("repair_asr_max", math.inf)
    repair_drop = bars.get("repair_ca_drop_max", math.inf)
    auroc_bar = bars.get("detection_auroc_min", -math.inf)
    lines = []
    for model, attack, seed in sorted({_case(r) for r in repairs}, key=str):
        mine = {r["defense"]: r for r in repairs if _case(r) == (model, attack, seed)}
        none = mine.get("none")
        if none is None:
            continue
        if none["asr"] <= repair_asr:
            lines.append(
                f"- {model}, {attack}, seed {seed}: no backdoor to repair or detect "
                f"(undefended ASR {none['asr']:.2f})"
            )
            continue
        for name in ("decomp_rep_he", "decomp_rep"):
            if name in mine:
                rep = mine[name]
                drop = none["ca"] - rep["ca"]
                ok = rep["asr"] <= repair_asr and drop <= repair_drop
                lines.append(
                    f"- {model}, {attack}, seed {seed}: {name} ASR {none['asr']:.2f} -> "
                    f"{rep['asr']:.2f}, CA {none['ca']:.2f} -> {rep['ca']:.2f} ({-drop:+.2f}): "
                    f"{'meets' if ok else 'misses'} ASR <= {repair_asr:g} with CA drop <= "
                    f"{repair_drop:g}"
                )
    weak = {_case(r) for r in repairs if r["defense"] == "none" and r["asr"] <= repair_asr}
    for row in detections:
        if _case(row) in weak:
            continue
        if row["detector"].startswith("decomp_det"):
            ok = row["auroc"] >= auroc_bar
            lines.append(
                f"- {row['model']}, {row['attack']}, seed {row['seed']}: {row['detector']} AUROC "
                f"{row['auroc']:.3f}: {'meets' if ok else 'misses'} >= {auroc_bar:g}"
            )
    return lines


def write_decomposition(rows: list[dict], sources: list[str], out: Path, ledger_name: str) -> str:
    order = {"badnet": 0, "blended": 1, "wanet": 2, "dual_embedding": 3}

    def key(r: dict) -> tuple:
        return (r["model"], order.get(r["attack"], 9), r["attack"], str(r["seed"]))

    detections = sorted([r for r in rows if r["table"] == "detection"], key=key)
    seen: set[tuple] = set()  # a recipe of detectors only has the poisoned model's row too
    repairs = []
    for row in sorted([r for r in rows if r["table"] == "repair"], key=key):
        if (*_case(row), row["defense"]) not in seen:
            seen.add((*_case(row), row["defense"]))
            repairs.append(row)
    flags = sorted([r for r in rows if r["table"] == "flags"], key=key)
    write_csv(out / "detection.csv", DETECTION_COLUMNS, detections)
    write_csv(out / "repair.csv", REPAIR_COLUMNS, repairs)
    figures = []
    for row in flags:
        name = f"decomposition_{row['attack']}_{row['detector']}_seed{row['seed']}.png"
        if row["model"] != "mini-clip":  # v1's figures keep their names
            name = f"{row['model']}_{name}"
        rates = {k: {p: np.asarray(v) for p, v in r.items()} for k, r in row["rates"].items()}
        title = f"{row['model']}, {row['attack']}: flag rates ({row['detector']})"
        flag_rate_figure(rates, out / name, title)
        figures.append(name)

    det_table = markdown_table(
        ["model", "attack", "detector", "seed", "images", "AUROC", "TPR @ 5% FPR"]
        + ["AUROC (successful)"]
        + ["filter: FPR", "filter: TPR", "ASR before", "ASR after"],
        [
            [r["model"], r["attack"], r["detector"], r["seed"], r.get("images", "-")]
            + [_fmt(r["auroc"])]
            + [_fmt(r.get("tpr_at_5fpr")), _fmt(r.get("auroc_successful"))]
            + [_fmt(r.get("filter_fpr")), _fmt(r.get("filter_tpr"))]
            + [_fmt(r.get("asr_before_filter")), _fmt(r.get("asr_after_filter"))]
            for r in detections
        ],
    )
    rep_table = markdown_table(
        ["model", "attack", "defense", "seed", "images", "CA %", "ASR %"],
        [
            [r["model"], r["attack"], r["defense"], r["seed"], r["images"], r["ca"], r["asr"]]
            for r in repairs
        ],
    )
    flag_table = markdown_table(
        ["model", "attack", "scan", "seed", "most flagged on triggered inputs: rate (clean rate)"],
        [
            [r["model"], r["attack"], r["detector"], r["seed"], _top_flags(r["rates"])]
            for r in flags
        ],
    )
    checks = verdicts(repairs, detections)
    text = (
        "# Decomposition, repair and input detection on poisoned mini-CLIP (He et al.)\n\n"
        'Caltech101 test, target "accordion", zero-shot (80 templates). A seeded 20% of the test'
        " split is the clean validation part (clean means, thresholds, STRIP's pool) and is in no"
        " number below. Layout ours (He et al. publish none).\n\n"
        "## Where the flags fall\n\n"
        + flag_table
        + "\n\nL<l>H<h>: head h of block l (0-based); rates over the detectors' test images."
        " `decomp_det_he` flags He's way (dot product with the clean mean at or below its 5%"
        " clean quantile); `decomp_det` by the distance to the clean mean (ours, 5% quantile"
        " for the heat map). Heat maps, written by the command (git-ignored): "
        + ", ".join(f"`{f}`" for f in figures)
        + "\n\n## Repair\n\n"
        + rep_table
        + "\n\nCA: top-1 on clean test images; ASR: triggered test images whose true class is"
        " not the target, predicted as the target. `none`: the poisoned model.\n\n"
        "## Detection\n\n"
        + det_table
        + "\n\nThe same drawn test images (true class not the target) for every detector, clean"
        " (negatives) and triggered (positives). AUROC (successful): positives restricted to"
        " triggered images classified as the target. Filter: flag when the score exceeds the"
        " 95% quantile of clean *validation* scores; FPR/TPR on the test images; ASR before /"
        " after dropping flagged inputs, over the drawn images.\n\n"
        + ("Against the targets' bars:\n\n" + "\n".join(checks) + "\n\n" if checks else "")
        + provenance("decomposition", ledger_name, sources)
    )
    (out / "decomposition.md").write_text(text)
    return text


TABLE = Table(
    "decomposition",
    lambda metrics, config, folder: decomposition_rows(metrics, config, lambda name, _c: name),
    write_decomposition,
    section="He et al.: decomposition, Decomp-Rep and Decomp-Det",
    stages=("detection", None),
)
