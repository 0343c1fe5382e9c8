"""Summary tables in ``results/``, written from run folders (never typed in by hand).

Each table names the recipes and the commits that produced its rows, so anyone can re-run them.
Run folders are git-ignored and die with the machine, so every summarised run also leaves a
record (its rows and where they came from) in ``results/<table>_runs.json``: a later call adds or
replaces runs in that ledger and rewrites the table from all of it, so rows measured in earlier
sessions are kept without their folders. ``--fresh`` starts the ledger over.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import yaml

from clip_backdoor.ablation_results import ablation_rows, write_ablations
from clip_backdoor.bai_results import bai_rows, write_bai
from clip_backdoor.decomposition_results import decomposition_rows, write_decomposition
from clip_backdoor.defense_results import defense_rows, write_defenses
from clip_backdoor.errors import UserError
from clip_backdoor.measuring_results import measuring_rows, write_measuring
from clip_backdoor.runner import ASR_NOTE
from clip_backdoor.runs import config_model, markdown_table, provenance

POISONING_COLUMNS = [
    "model",
    "trigger",
    "ca_clean",
    "ca_poisoned",
    "asr",
    "asr_all",
    "asr_after_ft",
    "ca_after_ft",
    "psnr",
    "ssim",
    "poisoned_pairs",
    "seed",
]


def _read_run(folder: Path) -> tuple[dict, dict]:
    metrics_file, config_file = folder / "metrics.json", folder / "config.yaml"
    if not metrics_file.is_file() or not config_file.is_file():
        raise UserError(f"{folder} is not a finished run folder (no metrics.json/config.yaml)")
    return json.loads(metrics_file.read_text()), yaml.safe_load(config_file.read_text())


def _pct(value) -> float:
    return math.nan if value is None else 100 * float(value)


def poisoning_row(metrics: dict, config: dict) -> dict:
    """One row of the poisoning table from a clean -> attack -> FT run, on its first data set."""
    points = metrics.get("points", [])
    data = points[0]["data"] if points else None
    by_kind: dict[str, dict] = {}
    for point in points:
        if point["data"] == data:
            by_kind.setdefault(point["kind"], point)
    attack = next((v for k, v in metrics.items() if k.startswith("attack.")), None)
    if "attack" not in by_kind or attack is None:
        raise UserError(f"run {config.get('name')} has no attack stage to summarise")
    defense = by_kind.get("defense", {})
    quality = metrics.get("quality", {})
    return {
        "trigger": trigger_label(attack.get("trigger", "?"), config),
        "ca_clean": _pct(by_kind.get("clean", {}).get("ca")),
        "ca_poisoned": _pct(by_kind["attack"]["ca"]),
        "asr": _pct(by_kind["attack"].get("asr")),
        "asr_all": _pct(by_kind["attack"].get("asr_all")),
        "asr_after_ft": _pct(defense.get("asr")),
        "ca_after_ft": _pct(defense.get("ca")),
        "psnr": quality.get("psnr", math.nan),
        "ssim": quality.get("ssim", math.nan),
        "poisoned_pairs": attack.get("poisoned_pairs", ""),
        "seed": config.get("seed"),
        "model": config_model(config),
        "epochs": _attack_epochs(config),
    }


def _attack_params(config: dict) -> dict:
    for stage in config.get("stages", []):
        if stage.get("kind") == "attack":
            return stage.get("params", {})
    return {}


def trigger_label(name: str, config: dict) -> str:
    """The trigger's name with what tells its variants apart: a blended image or noise grid."""
    trigger = _attack_params(config).get("trigger", {})
    params = trigger.get("params", {}) if isinstance(trigger, dict) else {}
    if params.get("image_file"):
        return f"{name} ({params['image_file']})"
    if params.get("noise_size"):
        return f"{name} (noise {params['noise_size']}x{params['noise_size']})"
    return name


def family(label: str) -> str:
    """``blended (skimage:chelsea)`` -> blended, ``wanet_clipref`` -> wanet: the issue's names."""
    return label.split(" ")[0].removesuffix("_clipref")


def _attack_epochs(config: dict):
    """The attack's fine-tuning epochs as the run's own config recorded them (recipes change)."""
    params = _attack_params(config)
    return params.get("training", {}).get("epochs", params.get("epochs", ""))


HEADLINE_TRIGGERS = ("badnet", "blended", "wanet", "dual_embedding")  # the issue's >= 80% set
ASR_BAR, CA_DROP_BAR = 80.0, 3.0


def verdict(row: dict) -> str:
    """The issue's bar for one row: ASR >= 80% with CA within 3 points of the clean model."""
    drop = row["ca_clean"] - row["ca_poisoned"]
    if row["asr"] >= ASR_BAR and drop <= CA_DROP_BAR:
        return "passes"
    reasons = [f"ASR < {ASR_BAR:g}"] * (row["asr"] < ASR_BAR)
    reasons += [f"CA drop > {CA_DROP_BAR:g}"] * (drop > CA_DROP_BAR)
    return "fails: " + ", ".join(reasons)


def headline_checks(rows: list[dict]) -> list[str]:
    """Liang's Table 1 headline per seed: the dual patch keeps more ASR after FT than the rest.

    Every dual-embedding row is compared with every BadNet and Blended row of its seed (a
    trigger may have been run under several schedules; each row names its epochs).
    """

    def name(row: dict) -> str:
        epochs = row.get("epochs")
        return f"{row['trigger']}{f' ({epochs} epochs)' if epochs else ''}"

    lines = []
    for model, seed in sorted({(r["model"], r["seed"]) for r in rows}, key=str):
        same = sorted((r for r in rows if (r["model"], r["seed"]) == (model, seed)), key=name)
        duals = [r for r in same if r["trigger"] == "dual_embedding"]
        others = [r for r in same if family(r["trigger"]) in ("badnet", "blended")]
        for dual in duals:
            for other in others:
                holds = dual["asr_after_ft"] > other["asr_after_ft"]
                lines.append(
                    f"- {model}, seed {seed}: ASR after FT, {name(dual)} {dual['asr_after_ft']:.2f}"
                    f" vs {name(other)} {other['asr_after_ft']:.2f}: "
                    f"{'holds' if holds else 'does not hold'}"
                )
    return lines


TABLES = (
    "poisoning",
    "bai",
    "defenses",
    "ablation",
    "decomposition",
    "measuring",
    "scan",
    "data_scan",
)


def run_record(table: str, folder: Path) -> dict:
    """What a summary keeps of one run folder: its rows and the line naming its provenance."""
    metrics, config = _read_run(folder)
    if table == "bai":
        rows = bai_rows(metrics, config)
    elif table == "defenses":
        rows = defense_rows(metrics, config, trigger_label)
    elif table == "ablation":
        rows = ablation_rows(metrics, config)
    elif table == "decomposition":
        rows = decomposition_rows(metrics, config, lambda name, _config: name)  # issue's names
    elif table == "measuring":
        rows = measuring_rows(metrics, config)
    elif table == "scan":
        from clip_backdoor.scanning.results import scan_rows

        rows = scan_rows(metrics, config, folder)
    elif table == "data_scan":
        from clip_backdoor.data_scan.results import data_scan_rows

        rows = data_scan_rows(metrics, config)
    else:
        rows = [poisoning_row(metrics, config)]
    versions = config.get("versions", {})
    source = (
        f"- `{folder.name}`: recipe `{config.get('recipe_file') or config.get('name')}`, "
        f"seed {config.get('seed')}, commit `{versions.get('commit', '?')}`, "
        f"{versions.get('cpu', '?')}"
    )
    quality = metrics.get("quality")
    if table == "bai" and quality:  # the poisoning table has its own PSNR/SSIM columns
        source += (
            f"; trigger of its last stage: PSNR {quality['psnr']:.2f} dB, SSIM "
            f"{quality['ssim']:.4f} ({quality.get('quality_n', '?')} test images)"
        )
    return {"run": folder.name, "source": source, "rows": rows}


def ledger_path(table: str, out: Path) -> Path:
    return out / f"{table}_runs.json"


def read_ledger(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        records = {record["run"]: record for record in json.loads(path.read_text())}
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a run ledger ({e}); remove it or pass --fresh") from None
    for record in records.values():  # ledgers older than the model column hold v1 runs only
        for row in record["rows"]:
            row.setdefault("model", "mini-clip")
    return records


def write_summary(table: str, runs: list[str], out: str | Path, fresh: bool = False) -> str:
    if table not in TABLES:
        raise UserError(f"unknown summary table '{table}' (known: {', '.join(TABLES)})")
    out = Path(out)
    ledger = {} if fresh else read_ledger(ledger_path(table, out))
    new = [run_record(table, Path(run)) for run in runs]  # read all before writing anything
    ledger.update({record["run"]: record for record in new})
    if not ledger:
        raise UserError(f"no runs to summarise: give run folders (none recorded in {out})")
    records = [ledger[name] for name in sorted(ledger)]
    rows = [row for record in records for row in record["rows"]]
    sources = [record["source"] for record in records]
    out.mkdir(parents=True, exist_ok=True)
    ledger_file = ledger_path(table, out)
    ledger_file.write_text(json.dumps(records, indent=1) + "\n")
    if table == "bai":
        return write_bai(rows, sources, out, ledger_file.name)
    if table == "defenses":
        return write_defenses(rows, sources, out, ledger_file.name)
    if table == "ablation":
        return write_ablations(rows, sources, out, ledger_file.name)
    if table == "decomposition":
        return write_decomposition(rows, sources, out, ledger_file.name)
    if table == "measuring":
        return write_measuring(rows, sources, out, ledger_file.name)
    if table == "scan":
        from clip_backdoor.scanning.results import write_scan

        return write_scan(rows, sources, out, ledger_file.name)
    if table == "data_scan":
        from clip_backdoor.data_scan.results import write_data_scan

        return write_data_scan(rows, sources, out, ledger_file.name)
    rows.sort(key=lambda r: (r["model"], str(r["trigger"]), r["seed"]))
    with (out / f"{table}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=POISONING_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()}
            )
    headers = [
        "model",
        "trigger",
        "seed",
        "poisoned pairs",
        "attack epochs",
        "CA clean %",
        "CA poisoned %",
        "ASR %",
        "asr_all %",
        "ASR after FT %",
        "CA after FT %",
        "PSNR dB",
        "SSIM",
        "bar (ASR >= 80, CA drop <= 3)",
    ]
    body = [
        [
            r["model"],
            r["trigger"],
            r["seed"],
            r["poisoned_pairs"],
            r["epochs"],
            r["ca_clean"],
            r["ca_poisoned"],
            r["asr"],
            r["asr_all"],
            r["asr_after_ft"],
            r["ca_after_ft"],
            r["psnr"],
            f"{r['ssim']:.4f}",
            verdict(r) if family(r["trigger"]) in HEADLINE_TRIGGERS else "reported",
        ]
        for r in rows
    ]
    checks = headline_checks(rows)
    text = (
        '# Poisoning attacks on mini-CLIP (zero-shot, caltech101 test, target "accordion")\n\n'
        + markdown_table(headers, body)
        + f"\n\n{ASR_NOTE} PSNR/SSIM: triggered vs clean test images at model resolution.\n\n"
        + (
            "Liang's headline (the dual-embedding patch keeps more ASR after FT):\n\n"
            + "\n".join(checks)
            + "\n\n"
            if checks
            else ""
        )
        + provenance("poisoning", ledger_file.name, sources)
    )
    (out / f"{table}.md").write_text(text)
    return text
