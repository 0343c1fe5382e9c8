"""``results/measuring.md`` and ``.csv``: can a measuring model judge few-shot methods?

What a model must show before CoOp, CoCoOp, VPT, RVPT and the linear probe can be judged on it:
held-out zero-shot CA, few-shot methods against the zero-shot prompt of the same run
(the gain), linear probes for class-irrelevant pixel attributes (``attribute_probe.csv``) and
how far apart the zero-shot head's class captions sit (``text_head.csv``), each with the model
it was measured on, so v1 and v2 rows sit side by side.
"""

from __future__ import annotations

import math
from pathlib import Path

from clip_backdoor.reports.common import Table, config_model, markdown_table, provenance, write_csv
from clip_backdoor.reports.targets import targets

MEASURING_COLUMNS = ["model", "data", "classes", "method", "shots", "templates", "ca"]
MEASURING_COLUMNS += ["zeroshot_ca", "gain", "seed"]
ATTRIBUTE_COLUMNS = ["model", "data", "attribute", "classes", "accuracy", "majority", "seed"]
TEXT_HEAD_COLUMNS = ["model", "data", "classes", "mean_cosine", "max_cosine", "scale", "ce_floor"]
TEXT_HEAD_COLUMNS += ["ce_uniform"]


def _shots(config: dict, label: str):
    for stage in config.get("stages", []):
        if (stage.get("label") or stage.get("method")) == label:
            return stage.get("params", {}).get("train", {}).get("shots", 16)
    return ""


def measuring_rows(metrics: dict, config: dict) -> list[dict]:
    """One row per evaluated point; the zero-shot point of the same data set is the baseline."""
    points = metrics.get("points", [])
    zeroshot = {p["data"]: p["ca"] for p in points if p["kind"] == "clean"}
    rows = []
    for point in points:
        if point["kind"] == "analysis":  # the model unchanged (runs before analyses had no point)
            continue
        method = "zeroshot" if point["kind"] == "clean" else point["point"]
        base = zeroshot.get(point["data"])
        rows.append(
            {
                "kind": "fewshot",
                "model": config_model(config),
                "data": point["data"],
                "classes": point.get("classes", ""),
                "method": method,
                "shots": "" if method == "zeroshot" else _shots(config, point["point"]),
                "ca": 100 * point["ca"],
                "zeroshot_ca": math.nan if base is None else 100 * base,
                "gain": math.nan if base is None else 100 * (point["ca"] - base),
                "templates": len(config.get("resolved", {}).get("templates", [])),
                "seed": config.get("seed"),
            }
        )
    for key, value in metrics.items():
        if key.startswith("analysis.") and "text_head" in value:
            for data, heads in value["text_head"].items():
                rows += [
                    {"kind": "text_head", "model": config_model(config), "data": data.split("/")[0]}
                    | head
                    for head in heads
                ]
        if not key.startswith("analysis.") or "sets" not in value:
            continue
        for data, probes in value["sets"].items():
            for probe in probes:
                rows.append(
                    {
                        "kind": "attribute",
                        "model": config_model(config),
                        "data": data.split("/")[0],
                        "attribute": probe["attribute"],
                        "classes": probe["classes"],
                        "accuracy": 100 * probe["accuracy"],
                        "majority": 100 * probe["majority"],
                        "seed": config.get("seed"),
                    }
                )
    return rows


def gain_bars() -> dict[str, tuple[str, float]]:
    """method -> (">=" or ">", the least gain over zero-shot), from the targets (measuring)."""
    bars = targets("measuring")
    at_least = {m: (">=", float(v)) for m, v in bars.get("gain_at_least", {}).items()}
    return at_least | {m: (">", float(v)) for m, v in bars.get("gain_above", {}).items()}


def bar_method(label: str) -> str | None:
    """The method whose bar a point is held to: its label, or the label's prefix before a
    variant's suffix (``cocoop_lr6`` is CoCoOp with another lr)."""
    bars = gain_bars()
    if label in bars:
        return label
    return next((m for m in bars if label.startswith(m + "_")), None)


def _bar(row: dict) -> str:
    method = bar_method(row["method"])
    if method is None or math.isnan(row["gain"]):
        return "-"
    sign, bar = gain_bars()[method]
    passed = row["gain"] > bar if sign == ">" else row["gain"] >= bar
    return f"{'meets' if passed else 'misses'} ({sign} {bar:+.0f})"


def distinct_baselines(points: list[dict]) -> list[dict]:
    """Every run measures its own zero-shot baseline, so several runs of one model, data set,
    template set and seed repeat the same number: it is listed once."""
    seen, kept = set(), []
    for row in points:
        key = tuple(row[c] for c in MEASURING_COLUMNS) if row["method"] == "zeroshot" else None
        if key is None or key not in seen:
            kept.append(row)
        if key is not None:
            seen.add(key)
    return kept


def write_measuring(rows: list[dict], sources: list[str], out: Path, ledger_name: str) -> str:
    points = distinct_baselines([r for r in rows if r["kind"] == "fewshot"])
    points.sort(key=lambda r: (r["data"], r["method"] != "zeroshot", r["method"], r["model"]))
    probes = [r for r in rows if r["kind"] == "attribute"]
    probes.sort(key=lambda r: (r["data"], r["attribute"], r["model"]))
    write_csv(out / "measuring.csv", MEASURING_COLUMNS, points)
    write_csv(out / "attribute_probe.csv", ATTRIBUTE_COLUMNS, probes)
    heads = sorted(
        (r for r in rows if r["kind"] == "text_head"),
        key=lambda r: (r["data"], r["model"], r["scale"]),
    )
    if heads:
        write_csv(out / "text_head.csv", TEXT_HEAD_COLUMNS, heads)
    text = "# Measuring models: can few-shot methods be judged on them?\n\n"
    heldout = [r for r in points if r["method"] == "zeroshot" and r["templates"] > 1]
    if heldout:
        text += "## Held-out zero-shot CA (CLIP's 80 templates averaged)\n\n"
        text += markdown_table(
            ["model", "data", "classes", "CA %", "seed"],
            [[r["model"], r["data"], r["classes"], r["ca"], r["seed"]] for r in heldout],
        )
        text += "\n\n"
    tuned = [r for r in points if r["method"] != "zeroshot"]
    if tuned:
        text += "## Few-shot methods against the zero-shot prompt of the same run\n\n"
        headers = ["model", "data", "classes", "method", "shots", "seed", "ACC %"]
        headers += ["zero-shot %", "gain", "bar"]
        body = [
            [r["model"], r["data"], r["classes"], r["method"], r["shots"], r["seed"], r["ca"]]
            + [r["zeroshot_ca"], r["gain"], _bar(r)]
            for r in sorted(tuned, key=lambda r: (r["model"], r["data"], r["method"], r["seed"]))
        ]
        text += markdown_table(headers, body)
        text += (
            '\n\nZero-shot: the hand-made prompt "a photo of a {}." on the same test images. '
            "Bar: the least gain over zero-shot each method is held to (recipes/targets.yaml, "
            "measuring). Shots come from the model's few-shot pool where it has one (v2), else "
            "from the train split (v1).\n\n"
        )
    if probes:
        text += "## Probes for class-irrelevant features (pixel attributes)\n\n"
        text += markdown_table(
            ["model", "data", "attribute", "classes", "probe %", "majority %", "seed"],
            [[r[c] for c in ATTRIBUTE_COLUMNS] for r in probes],
        )
        text += (
            "\n\nLogistic regression on standardised frozen image features, fit on a seeded "
            "half of each test split and scored on the other half; majority: the most frequent "
            "attribute value of the fit half, scored the same way.\n\n"
        )
    if heads:
        text += "## How far apart the zero-shot head's class captions sit\n\n"
        text += markdown_table(
            ["model", "data", "classes", "mean cos", "max cos", "logit scale", "CE floor", "ln C"],
            [[r[c] for c in TEXT_HEAD_COLUMNS] for r in heads],
        )
        text += (
            '\n\nPairwise cosines of the class embeddings ("a photo of a {}."); CE floor: the '
            "mean cross-entropy of an image feature placed exactly on its class's embedding, at "
            "the model's logit scale and at CLIP's 100. VPT and RVPT tune the image side against "
            "this frozen head, so their CE cannot fall below it.\n\n"
        )
    text += provenance("measuring", ledger_name, sources)
    (out / "measuring.md").write_text(text)
    return text


TABLE = Table("measuring", lambda m, c, _: measuring_rows(m, c), write_measuring)
