"""``results/families.md`` / ``.csv``: seconds per stage of the full-size smoke runs.

Two kinds of run: ``recipes/families/smoke_*.yaml`` (one step of every encode-level method on an
untrained full-size model at its native resolution, ``compat/recipe.py``), and the papers'
recipes run with ``--smoke`` (``recipes/papers/``: each paper's stages on its own architecture,
untrained, a few steps). Each run's ``metrics.json`` times every stage (``stage_seconds``). The
tables show that each method runs at full size and what a step costs on the machine the run
names.
"""

from __future__ import annotations

from pathlib import Path

from clip_backdoor.reports.common import Table, config_model, markdown_table, provenance, write_csv

COLUMNS = [
    "run",
    "model",
    "family",
    "stage",
    "seconds",
    "resolution",
    "parameters",
    "cpu",
    "precision",
    "device",
]


def family_rows(metrics: dict, config: dict, folder: Path) -> list[dict]:
    del folder
    smoke = metrics.get("analysis.model_info", {})
    common = {
        "run": config.get("name", "?"),
        "device": config.get("device", "cpu"),
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


SECTIONS = [  # (heading, whose rows, column label, sizes row, note)
    (
        "Families: one step of every encode-level method",
        lambda r: r["family"] != "?",
        lambda r: f"{r['model']} ({r['family']})",
        True,
        "One step of every encode-level method (a trigger's fit, a training step of the "
        "poisoning, FT, CleanCLIP and BadEncoder, a detector's scoring, a scanner's search) on an "
        "untrained full-size model at its native resolution, synthetic images "
        "(`recipes/families/`); seconds of the stage as the run folder's `metrics.json` times it "
        "(a stage whose artifact an identical earlier run cached counts only its reuse: the "
        "run's `log.txt` says 'reusing the cached attack artifact'). `-`: not in that run.",
    ),
    (
        "The papers' recipes, `--smoke`",
        lambda r: r["family"] == "?",
        lambda r: f"{r['run']} ({r['model']}, {r['device']})",
        False,
        "Each paper's recipe at its own settings (`recipes/papers/`), run with `--smoke`: the "
        "same stages on the same architecture, untrained, a few steps on a few synthetic images "
        "as the recipe's `smoke:` section says, on the device named in the run. Seconds show "
        "that the full-size path runs, not what the paper's run costs.",
    ),
]


def write_families(rows: list[dict], sources: list[str], out: Path, ledger_name: str) -> str:
    text = "# Full-size models: seconds per stage\n\n"
    for heading, keep, column, sizes, note in SECTIONS:
        part = [r for r in rows if keep(r)]
        if part:
            text += f"## {heading}\n\n{_table(part, column, sizes)}\n\n{note}\n\n"
    text += provenance("families", ledger_name, sources)
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.md").write_text(text)
    write_csv(out / "families.csv", COLUMNS, rows)
    return text


def _table(rows: list[dict], column, sizes: bool) -> str:
    columns = list(dict.fromkeys(column(r) for r in rows))
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    seconds = {(column(r), r["stage"]): r["seconds"] for r in rows}
    body = [[s] + [_seconds(seconds.get((c, s))) for c in columns] for s in stages]
    totals = ["total"] + [
        _seconds(sum(r["seconds"] for r in rows if column(r) == c)) for c in columns
    ]
    info = {column(r): r for r in rows}
    head = []
    if sizes:
        head = [
            ["resolution, parameters"]
            + [f"{info[c]['resolution']} px, {_millions(info[c]['parameters'])}" for c in columns]
        ]
    return markdown_table(["stage", *columns], [*head, *body, totals])


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _millions(value) -> str:
    return f"{int(value) / 1e6:.0f}M" if value not in ("", None) else "?"


TABLE = Table("families", family_rows, write_families)
