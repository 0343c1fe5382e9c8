"""``results/families.md`` / ``.csv``: seconds per stage of the full-size family smoke runs.

Each run is ``recipes/families/smoke_*.yaml`` (one step of every encode-level method on an
untrained full-size model at its native resolution, ``compat/recipe.py``); its ``metrics.json``
times every stage (``stage_seconds``). The table shows that each method runs on each family at
full size and what one step costs on the machine the run names.
"""

from __future__ import annotations

from pathlib import Path

from clip_backdoor.reports.common import Table, config_model, markdown_table, provenance, write_csv

COLUMNS = ["model", "family", "stage", "seconds", "resolution", "parameters", "cpu", "precision"]


def family_rows(metrics: dict, config: dict, folder: Path) -> list[dict]:
    del folder
    smoke = metrics.get("analysis.model_info", {})
    common = {
        "model": config_model(config),
        "family": smoke.get("family", "?"),
        "resolution": smoke.get("resolution", ""),
        "parameters": smoke.get("parameters", ""),
        "cpu": config.get("versions", {}).get("cpu", "?"),
        "precision": config.get("resolved", {}).get("precision", "fp32"),
    }
    rows = [
        {**common, "stage": stage, "seconds": float(seconds)}
        for stage, seconds in metrics.get("stage_seconds", {}).items()
    ]
    clean = metrics.get("evaluation_seconds", {}).get("clean")
    if clean is not None:
        rows.insert(0, {**common, "stage": "eval (CA/ASR, clean model)", "seconds": clean})
    return [r for r in rows if r["stage"] != "analysis.model_info"]


def write_families(rows: list[dict], sources: list[str], out: Path, ledger_name: str) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    seconds = {(r["model"], r["stage"]): r["seconds"] for r in rows}
    family = {r["model"]: r["family"] for r in rows}
    headers = ["stage"] + [f"{m} ({family[m]})" for m in models]
    body = [[s] + [_seconds(seconds.get((m, s))) for m in models] for s in stages]
    totals = ["total"] + [
        _seconds(sum(r["seconds"] for r in rows if r["model"] == m)) for m in models
    ]
    info = {r["model"]: r for r in rows}
    sizes = ["resolution, parameters"] + [
        f"{info[m]['resolution']} px, {_millions(info[m]['parameters'])}" for m in models
    ]
    text = "# Full-size families on the CPU: seconds per stage\n\n"
    text += markdown_table(headers, [sizes, *body, totals])
    text += (
        "\n\nOne step of every encode-level method (a trigger's fit, a training step of the "
        "poisoning, FT, CleanCLIP and BadEncoder, a detector's scoring, a scanner's search) on "
        "an untrained full-size model at its native resolution, synthetic images; seconds of "
        "the stage as the run folder's `metrics.json` times it (cached work excluded: each run "
        "starts from an empty cache). `-`: not in that run.\n\n"
    )
    text += provenance("families", ledger_name, sources)
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.md").write_text(text)
    write_csv(out / "families.csv", COLUMNS, rows)
    return text


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _millions(value) -> str:
    return f"{int(value) / 1e6:.0f}M" if value not in ("", None) else "?"


TABLE = Table("families", family_rows, write_families)
