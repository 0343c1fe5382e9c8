"""``results/bai.md`` and ``.csv``: Bai et al.'s Table 2/3/6 layout, written from run folders.

One CSV row per (run, evaluation point, evaluation set): ``protocol,source,eval_set,classes,
method,acc,asr,seed``. The markdown adds, per base-to-novel run and method, the harmonic means
H of seen and unseen ACC and ASR (docs/methods.md 3.5).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from clip_backdoor.reports.common import Table, config_model, markdown_table, provenance

BAI_COLUMNS = ["model", "protocol", "source", "eval_set", "classes", "method", "acc", "asr", "seed"]
PAPER_EPS, PAPER_JOINT_EPOCHS = 4 / 255, 10


def _variant(params: dict) -> str:
    """Rows of an attack off the paper's eps (4/255) or joint epochs (10) say so."""
    eps = params.get("eps", PAPER_EPS)
    epochs = params.get("training", {}).get("epochs", PAPER_JOINT_EPOCHS)
    suffix = "" if math.isclose(eps, PAPER_EPS, rel_tol=1e-6) else f"@eps{eps * 255:g}/255"
    return suffix + ("" if epochs == PAPER_JOINT_EPOCHS else f"@{epochs}ep")


def _attack_method(params: dict) -> str:
    name = "badclip" if params.get("learner", "cocoop") == "cocoop" else "trigger_agnostic"
    return name + _variant(params)


def _method(point: str, stages: list[dict], loaded: dict | None = None) -> str:
    if point == "model" and loaded is not None:
        return _attack_method(loaded)  # the run evaluated a saved prompt backdoor
    if point in ("clean", "model"):
        return "zeroshot"
    for stage in stages:
        if (stage.get("label") or stage["method"]) != point:
            continue
        if stage["method"] == "badclip":
            return _attack_method(stage.get("params", {}))
        return stage["method"]
    return point


def _loaded_attack(config: dict) -> dict | None:
    """The attack config of a saved prompt backdoor the run's model names, if it does."""
    info = Path(str(config.get("model", {}).get("name", ""))) / "backdoor.json"
    if not info.is_file():
        return None
    return json.loads(info.read_text()).get("config")


def _source(stages: list[dict]) -> str:
    for stage in stages:
        train = stage.get("params", {}).get("train")
        if train:
            classes = train.get("classes", "all")
            return train.get("name", "caltech101") + ("" if classes == "all" else f":{classes}")
    return "?"


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def bai_rows(metrics: dict, config: dict) -> list[dict]:
    stages = config.get("stages", [])
    loaded = _loaded_attack(config)
    if loaded is not None:
        stages = [{"method": "badclip", "params": loaded}, *stages]  # where it was trained
    parts = {d.get("classes", "all") for d in config.get("data", [])}
    protocol = "base2novel" if parts & {"base", "novel"} else "cross_dataset"
    rows = []
    for point in metrics.get("points", []):
        asr = point.get("asr")
        shifted = "~" in point["data"]  # DomainShift's name: the cross-domain stand-in
        rows.append(
            {
                "protocol": "cross_domain_standin" if shifted else protocol,
                "source": _source(stages),
                "eval_set": point["data"].split("+")[0],
                "classes": point.get("classes", ""),
                "method": _method(point["point"], stages, loaded),
                "acc": 100 * point["ca"],
                "asr": "" if asr is None else 100 * asr,
                "seed": config.get("seed"),
                "model": config_model(config),
            }
        )
    return rows


def harmonic_lines(rows: list[dict]) -> list[list]:
    """Per source, method and seed with a base and a novel row: H of ACC and of ASR."""
    table = []
    keys = sorted({(r["model"], r["source"], r["method"], r["seed"]) for r in rows}, key=str)
    for model, source, method, seed in keys:
        key = (model, source, method, seed)
        mine = [r for r in rows if (r["model"], r["source"], r["method"], r["seed"]) == key]
        base = [r for r in mine if r["eval_set"].endswith(":base")]
        novel = [r for r in mine if r["eval_set"].endswith(":novel")]
        if not base or not novel:
            continue
        b, n = base[0], novel[0]
        h_asr = harmonic(b["asr"], n["asr"]) if b["asr"] != "" and n["asr"] != "" else math.nan
        table.append([model, source, method, seed, b["acc"], n["acc"]])
        table[-1].append(harmonic(b["acc"], n["acc"]))
        table[-1] += [b["asr"] or math.nan, n["asr"] or math.nan, h_asr]
    return table


def write_bai(rows: list[dict], sources: list[str], out: Path, ledger_name: str) -> str:
    with (out / "bai.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=BAI_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    body = [[r[c] if r[c] != "" else math.nan for c in BAI_COLUMNS] for r in rows]
    h = harmonic_lines(rows)
    text = (
        "# Trigger-aware prompt attack (Bai et al.) on mini-CLIP\n\n"
        + markdown_table(
            ["model", "protocol", "source", "eval set", "classes", "method", "ACC %"]
            + ["ASR %", "seed"],
            body,
        )
        + "\n\nACC: top-1 on clean test images. ASR: triggered test images whose true class is not"
        " the target, predicted as the target. On a class list without the target (unseen"
        " classes, other data sets) the target name is inserted at index 0 (docs/methods.md 3.5),"
        " so"
        " those ACC rows count one class more than CoCoOp's. `<set>~<shift>` rows are the"
        " cross-domain stand-in: a grayscale, blurred or edge-sketch copy of the test set, not"
        " the paper's ImageNet variants.\n\n"
    )
    if h:
        headers = ["model", "source", "method", "seed", "ACC seen", "ACC unseen", "ACC H"]
        headers += ["ASR seen", "ASR unseen", "ASR H"]
        text += "Base-to-novel, harmonic means:\n\n" + markdown_table(headers, h) + "\n\n"
    text += provenance("bai", ledger_name, sources)
    (out / "bai.md").write_text(text)
    return text


def quality_note(metrics: dict) -> str:
    """The trigger's PSNR/SSIM beside a run's provenance (the table has no column for it)."""
    quality = metrics.get("quality")
    if not quality:
        return ""
    return (
        f"; trigger of its last stage: PSNR {quality['psnr']:.2f} dB, SSIM "
        f"{quality['ssim']:.4f} ({quality.get('quality_n', '?')} test images)"
    )


TABLE = Table(
    "bai",
    lambda m, c, _: bai_rows(m, c),
    write_bai,
    quality_note,
    section="Bai et al.: the trigger-aware prompt attack",
    stages=("prompt", None),
)
