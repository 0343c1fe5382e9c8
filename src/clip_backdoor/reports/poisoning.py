"""``results/poisoning.md`` / ``.csv``: CA and ASR of each trigger, then after clean FT."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from clip_backdoor.core.errors import UserError
from clip_backdoor.evaluation.metrics import ASR_NOTE
from clip_backdoor.reports.common import Table, config_model, markdown_table, pct, provenance
from clip_backdoor.reports.targets import targets

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
        "ca_clean": pct(by_kind.get("clean", {}).get("ca")),
        "ca_poisoned": pct(by_kind["attack"]["ca"]),
        "asr": pct(by_kind["attack"].get("asr")),
        "asr_all": pct(by_kind["attack"].get("asr_all")),
        "asr_after_ft": pct(defense.get("asr")),
        "ca_after_ft": pct(defense.get("ca")),
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
    """``blended (skimage:chelsea)`` -> blended, ``wanet_clipref`` -> wanet: the trigger
    families the targets name."""
    return label.split(" ")[0].removesuffix("_clipref")


def _attack_epochs(config: dict):
    """The attack's fine-tuning epochs as the run's own config recorded them (recipes change)."""
    params = _attack_params(config)
    return params.get("training", {}).get("epochs", params.get("epochs", ""))


def verdict(row: dict) -> str:
    """One row against the targets' bars (recipes/targets.yaml, poisoning): ASR at least
    ``asr_min`` with CA within ``ca_drop_max`` points of the clean model; "reported" for a
    trigger the targets do not hold to, "-" without targets."""
    bars = targets("poisoning")
    if "asr_min" not in bars:
        return "-"
    if family(row["trigger"]) not in bars.get("headline_triggers", [family(row["trigger"])]):
        return "reported"
    asr_bar, drop_bar = bars["asr_min"], bars.get("ca_drop_max", math.inf)
    drop = row["ca_clean"] - row["ca_poisoned"]
    if row["asr"] >= asr_bar and drop <= drop_bar:
        return "passes"
    reasons = [f"ASR < {asr_bar:g}"] * (row["asr"] < asr_bar)
    reasons += [f"CA drop > {drop_bar:g}"] * (drop > drop_bar)
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


def write_poisoning(rows: list[dict], sources: list[str], out: Path, ledger_name: str) -> str:
    rows.sort(key=lambda r: (r["model"], str(r["trigger"]), r["seed"]))
    with (out / "poisoning.csv").open("w", newline="") as handle:
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
            verdict(r),
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
        + provenance("poisoning", ledger_name, sources)
    )
    (out / "poisoning.md").write_text(text)
    return text


TABLE = Table(
    "poisoning",
    lambda metrics, config, folder: [poisoning_row(metrics, config)],
    write_poisoning,
    section="Liang et al.: poisoning and the dual-embedding patch",
    stages=("attack", frozenset({"poison", "badencoder"})),
)
