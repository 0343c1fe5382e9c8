"""``results/ablation_<recipe>.md``, ``.csv``, ``.png``: one defense parameter varied (RVPT 4.4).

An ablation recipe is an attack followed by defense stages that differ in one parameter (shots,
alpha, prompt length, first prompted block...). The varied parameter is found from the stage
params themselves, so a recipe needs no extra markup; its rows are CA and ASR per value, one
line per seed in the plot, with the undefended model as dashed lines.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from clip_backdoor.reports.common import Table, config_model, markdown_table

ABLATION_COLUMNS = ["model", "ablation", "defense", "parameter", "value", "ca", "asr", "seed"]


def _flatten(params: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def ablation_rows(metrics: dict, config: dict) -> list[dict]:
    """A row per defense point: the parameter that differs between the defense stages and its
    value there; the attacked model is the row with defense ``none`` (value empty)."""
    stages = [s for s in config.get("stages", []) if s.get("kind") == "defense"]
    flat = {s.get("label") or s["method"]: _flatten(s.get("params") or {}) for s in stages}
    keys = sorted({k for f in flat.values() for k in f})
    varied = [k for k in keys if len({json.dumps(f.get(k)) for f in flat.values()}) > 1]
    parameter = ", ".join(varied) or "-"
    rows = []
    for point in metrics.get("points", []):
        if point["kind"] not in ("attack", "defense") or "asr" not in point:
            continue
        values = flat.get(point["point"], {})
        value = ", ".join(str(values.get(k)) for k in varied) if point["kind"] == "defense" else ""
        rows.append(
            {
                "ablation": config.get("name"),
                "defense": point["point"] if point["kind"] == "defense" else "none",
                "parameter": parameter,
                "value": value,
                "ca": 100 * float(point["ca"]),
                "asr": 100 * float(point["asr"]),
                "seed": config.get("seed"),
                "model": config_model(config),
            }
        )
    return rows


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    parameter = next((r["parameter"] for r in rows if r["value"]), "value")
    numeric = all(not math.isnan(_number(r["value"])) for r in rows if r["value"])
    for seed in sorted({r["seed"] for r in rows}, key=str):
        mine = [r for r in rows if r["seed"] == seed and r["value"]]
        if numeric:
            mine.sort(key=lambda r: _number(r["value"]))
        xs = [_number(r["value"]) if numeric else r["value"] for r in mine]
        axis.plot(xs, [r["ca"] for r in mine], "o-", color="tab:blue", label=f"CA, seed {seed}")
        axis.plot(xs, [r["asr"] for r in mine], "s-", color="tab:red", label=f"ASR, seed {seed}")
        for base in (r for r in rows if r["seed"] == seed and not r["value"]):
            axis.axhline(base["ca"], color="tab:blue", ls="--", lw=0.8)
            axis.axhline(base["asr"], color="tab:red", ls="--", lw=0.8)
    if numeric and min(_number(r["value"]) for r in rows if r["value"]) > 0:
        values = sorted({_number(r["value"]) for r in rows if r["value"]})
        if values[-1] / values[0] >= 8:
            axis.set_xscale("log", base=2)
    axis.set_xlabel(parameter)
    axis.set_ylabel("%")
    axis.set_ylim(0, 100)
    axis.set_title(f"{rows[0]['ablation']} (dashed: undefended)", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_ablations(rows: list[dict], sources: list[str], out: Path, ledger_name: str) -> str:
    """One table, CSV and line plot per ablation recipe in the ledger."""
    texts = []
    for name in sorted({r["ablation"] for r in rows}):
        mine = [r for r in rows if r["ablation"] == name]
        mine.sort(key=lambda r: (str(r["seed"]), bool(r["value"]), _number(r["value"] or "0")))
        stem = out / f"ablation_{name}"
        with stem.with_suffix(".csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=ABLATION_COLUMNS)
            writer.writeheader()
            for row in mine:
                writer.writerow(
                    {k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()}
                )
        _plot(mine, stem.with_suffix(".png"))
        headers = ["model", "defense", "parameter", "value", "seed", "CA %", "ASR %"]
        body = [
            [r["model"], r["defense"], r["parameter"], r["value"], r["seed"], r["ca"], r["asr"]]
            for r in mine
        ]
        runs = [s for s in sources if f"recipe `recipes/{name}.yaml`" in s] or sources
        text = (
            f"# Ablation `{name}`\n\n"
            + markdown_table(headers, body)
            + f"\n\nLine plot: `{stem.name}.png`, written beside this file by the command"
            " (figures are not committed).\n\nCA: top-1 on the recipe's clean test images; ASR: "
            "its triggered test images whose true class is not the target, predicted as the "
            "target; `none` is the attacked model. Written by `clip-backdoor results ablation "
            "RUN_DIR...` from these "
            f"run folders (each recorded in `{ledger_name}`):\n\n" + "\n".join(runs) + "\n"
        )
        stem.with_suffix(".md").write_text(text)
        texts.append(text)
    return "\n".join(texts)


TABLE = Table("ablation", lambda m, c, _: ablation_rows(m, c), write_ablations)
