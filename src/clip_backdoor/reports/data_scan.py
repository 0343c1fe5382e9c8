"""``results/data_scan.md`` / ``.csv`` and ``results/cleaning.csv`` from runs with data scans.

Detection rows: per attack, embedding model (``attacked``: the model trained on the mix,
Huang et al.'s setting; ``clean``: the model the attack started from) and detector, the ranking
scored against the mix's ``poison.json``. Cleaning rows: the point after a ``cleaning`` defense
beside the attacked point it repairs.
"""

from __future__ import annotations

import math
from pathlib import Path

from clip_backdoor.reports.common import (
    Table,
    config_model,
    markdown_table,
    pct,
    provenance,
    write_csv,
)
from clip_backdoor.reports.targets import targets

DATA_SCAN_COLUMNS = ["attack", "model", "detector", "auroc", "tpr_at_1fpr", "tpr_at_5fpr"]
DATA_SCAN_COLUMNS += ["precision_at_k", "pairs", "poisoned", "seed", "base"]
CLEANING_COLUMNS = ["attack", "detector", "removed", "poisoned_removed", "ca", "asr", "seed"]
CLEANING_COLUMNS += ["ca_attacked", "asr_attacked", "poisoned", "embedding", "base"]


def _attack(config: dict) -> str:
    for stage in config.get("stages", []):
        if stage.get("kind") == "attack":
            trigger = stage.get("params", {}).get("trigger", {})
            return str(trigger.get("name", stage["method"]) if isinstance(trigger, dict) else "?")
    return "none"


def data_scan_rows(metrics: dict, config: dict) -> list[dict]:
    attack, seed, base = _attack(config), config.get("seed"), config_model(config)
    rows = []
    for key, found in metrics.items():
        if key.startswith("data_scan."):
            for model, part in found["models"].items():
                for detector, m in part["detectors"].items():
                    if "auroc" not in m:
                        continue
                    rows.append(
                        {
                            "kind": "detection",
                            "attack": attack,
                            "model": model,
                            "detector": detector,
                            "seed": seed,
                            "base": base,
                            **{c: m[c] for c in DATA_SCAN_COLUMNS[3:9]},
                        }
                    )
    points = metrics.get("points", [])
    attacked = next((p for p in points if p["kind"] == "attack"), None)
    stages = {f"defense.{s.get('label') or s['method']}": s for s in config.get("stages", [])}
    for key, info in metrics.items():
        stage = stages.get(key)
        if stage is None or stage.get("method") != "cleaning":
            continue
        label = key.split(".", 1)[1]
        point = next((p for p in points if p["point"] == label), None)
        if point is None or attacked is None:
            continue
        rows.append(
            {
                "kind": "cleaning",
                "attack": attack,
                "detector": info["detector"],
                "removed": info["removed"],
                "poisoned_removed": info["poisoned_removed"],
                "poisoned": info["poisoned"],
                "ca": pct(point["ca"]),
                "asr": pct(point.get("asr")),
                "ca_attacked": pct(attacked["ca"]),
                "asr_attacked": pct(attacked.get("asr")),
                "embedding": stage.get("params", {}).get("embedding", "attacked"),
                "seed": seed,
                "base": base,
            }
        )
    return rows


def _best_lines(detection: list[dict]) -> list[str]:
    """The best detector per attack and seed, against the targets' AUROC bar."""
    bar = targets("data_scan").get("auroc_min")
    lines = []
    for key in sorted({(r["base"], r["attack"], r["seed"]) for r in detection}, key=str):
        part = [r for r in detection if (r["base"], r["attack"], r["seed"]) == key]
        best = max(part, key=lambda r: r["auroc"])
        check = f" ({'meets' if best['auroc'] >= bar else 'misses'} >= {bar})" if bar else ""
        lines.append(
            f"- {key[0]}, {key[1]}, seed {key[2]}: best {best['detector']} with the "
            f"{best['model']} model, AUROC {best['auroc']:.3f}{check}"
        )
    return lines


def write_data_scan(rows: list[dict], sources: list[str], out: Path, ledger_name: str) -> str:
    detection = sorted(
        (r for r in rows if r["kind"] == "detection"),
        key=lambda r: (r["base"], r["attack"], r["detector"], r["model"], str(r["seed"])),
    )
    cleaning = sorted(
        (r for r in rows if r["kind"] == "cleaning"),
        key=lambda r: (r["base"], r["attack"], r["detector"], str(r["seed"])),
    )
    write_csv(out / "data_scan.csv", DATA_SCAN_COLUMNS, detection)
    write_csv(out / "cleaning.csv", CLEANING_COLUMNS, cleaning)
    text = "# Training-data scan: which pairs are poisoned?\n\n"
    text += (
        "Every pair of each attack's mix scored from embeddings alone (higher = more suspect), "
        "then the ranking held against its `poison.json`. `attacked`: embeddings of the model "
        "trained on the mix (Huang et al.'s setting); `clean`: of the model the attack started "
        "from.\n\n"
    )
    headers = ["base", "attack", "seed", "detector", "model", "AUROC", "TPR@1%FPR", "TPR@5%FPR"]
    headers += ["precision@k", "pairs", "poisoned"]
    body = [
        [
            r["base"],
            r["attack"],
            r["seed"],
            r["detector"],
            r["model"],
            f"{r['auroc']:.3f}",
            f"{r['tpr_at_1fpr']:.3f}",
            f"{r['tpr_at_5fpr']:.3f}",
            f"{r['precision_at_k']:.3f}",
            r["pairs"],
            r["poisoned"],
        ]
        for r in detection
    ]
    text += markdown_table(headers, body) + "\n\n"
    text += "\n".join(_best_lines(detection)) + "\n\n"
    if cleaning:
        text += "## Cleaning: drop the flagged pairs, train the attack again\n\n"
        headers = ["base", "attack", "seed", "detector", "embedding", "removed"]
        headers += ["poisoned removed", "CA %", "ASR %", "CA attacked %", "ASR attacked %", "bar"]
        body = []
        bars = targets("data_scan")
        asr_bar = bars.get("cleaning_asr_max", math.inf)
        ca_bar = bars.get("cleaning_ca_drop_max", math.inf)
        for r in cleaning:
            ok = r["asr"] <= asr_bar and r["ca_attacked"] - r["ca"] <= ca_bar
            bar = f"{'meets' if ok else 'misses'} (ASR <= {asr_bar:g}, CA drop <= {ca_bar:g})"
            body.append(
                [
                    r["base"],
                    r["attack"],
                    r["seed"],
                    r["detector"],
                    r["embedding"],
                    r["removed"],
                    f"{r['poisoned_removed']} of {r['poisoned']}",
                    r["ca"],
                    r["asr"],
                    r["ca_attacked"],
                    r["asr_attacked"],
                    bar if "cleaning_asr_max" in bars else "-",
                ]
            )
        text += markdown_table(headers, body) + "\n\n"
    text += provenance("data_scan", ledger_name, sources)
    (out / "data_scan.md").write_text(text)
    return text


TABLE = Table(
    "data_scan",
    lambda m, c, _: data_scan_rows(m, c),
    write_data_scan,
    section="Training-data scan",
    stages=("data_scan", None),
)
