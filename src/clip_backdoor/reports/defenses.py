"""``results/defenses.md`` and ``.csv``: attack x defense with CA, ASR and PR (RVPT Table 1).

One CSV row per (run, attack or defense point, evaluation set): ``attack,defense,ca,asr,asr_all,
pr,seed`` plus the evaluation set, so cross-dataset rows (tuned on caltech101, tested on another
set) sit beside the main ones. ``defense`` is ``none`` for the undefended (attacked) model.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from clip_backdoor.reports.common import Table, config_model, markdown_table, pct, provenance
from clip_backdoor.reports.targets import targets

DEFENSE_COLUMNS = ["model", "attack", "defense", "ca", "asr", "asr_all", "pr", "seed", "eval_set"]


def attack_label(config: dict, label_of) -> str:
    for stage in config.get("stages", []):
        if stage.get("kind") == "attack":
            trigger = stage.get("params", {}).get("trigger", {})
            name = trigger.get("name", stage["method"]) if isinstance(trigger, dict) else "?"
            return label_of(name, config)
    return "none"


def defense_rows(metrics: dict, config: dict, label_of) -> list[dict]:
    """Rows of the attacked model and of each defense after it (``label_of`` names triggers)."""
    attack = attack_label(config, label_of)
    rows = []
    for point in metrics.get("points", []):
        if point["kind"] not in ("attack", "defense"):
            continue
        rows.append(
            {
                "attack": attack,
                "defense": "none" if point["kind"] == "attack" else point["point"],
                "ca": pct(point["ca"]),
                "asr": pct(point.get("asr")),
                "asr_all": pct(point.get("asr_all")),
                "pr": point.get("pr", math.nan),
                "pr_trigger": point.get("pr_all", {}).get("trigger", math.nan),
                "seed": config.get("seed"),
                "model": config_model(config),
                "eval_set": point["data"].split("+")[0],
            }
        )
    return rows


def _three(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def verdicts(rows: list[dict]) -> list[str]:
    """RVPT against the targets' bar (recipes/targets.yaml, defenses) and against VPT, per
    attack, seed and evaluation set."""
    lines = []
    keys = sorted({(r["model"], r["attack"], r["seed"], r["eval_set"]) for r in rows}, key=str)
    for model, attack, seed, eval_set in keys:
        mine = {
            r["defense"]: r
            for r in rows
            if (r["model"], r["attack"], r["seed"], r["eval_set"])
            == (model, attack, seed, eval_set)
        }
        none = mine.get("none")
        if none is None:
            continue
        for label in sorted(d for d in mine if d == "rvpt" or d.startswith("rvpt_")):
            lines.append(_verdict(f"{model}, {attack}, seed {seed}, {eval_set}", label, mine))
    return lines


def vpt_partner(label: str, mine: dict[str, dict]) -> str | None:
    """The VPT run an RVPT variant is held against: the one sharing its suffix (``vpt_ce100``
    for ``rvpt_blocks_ce100``: the same CE), else plain ``vpt``."""
    vpts = [n for n in mine if n == "vpt" or (n.startswith("vpt_") and label.endswith(n[3:]))]
    return max(vpts, key=len) if vpts else None


def _verdict(where: str, label: str, mine: dict[str, dict]) -> str:
    """One RVPT variant (``rvpt``, ``rvpt_blocks``...) against the bar and against VPT."""
    rvpt, none = mine[label], mine["none"]
    drop = none["ca"] - rvpt["ca"]
    line = (
        f"- {where}: {label} ASR {rvpt['asr']:.2f} (from "
        f"{none['asr']:.2f}), CA {rvpt['ca']:.2f} ({-drop:+.2f})"
    )
    bars = targets("defenses")
    if "asr_max" in bars:
        asr_bar, drop_bar = bars["asr_max"], bars.get("ca_drop_max", math.inf)
        ok = rvpt["asr"] <= asr_bar and drop <= drop_bar
        line += f": {'meets' if ok else 'misses'} ASR <= {asr_bar:g} with CA drop <= {drop_bar:g}"
    vpt = vpt_partner(label, mine)
    if vpt is not None:
        lower = "lower" if rvpt["asr"] < mine[vpt]["asr"] else "not lower"
        line += f"; {vpt} ASR {mine[vpt]['asr']:.2f} ({lower})"
    if not math.isnan(rvpt["pr"]) and not math.isnan(none["pr"]):
        line += f"; PR {none['pr']:.3f} -> {rvpt['pr']:.3f}"
        trigger = (none.get("pr_trigger", math.nan), rvpt.get("pr_trigger", math.nan))
        if not any(math.isnan(v) for v in trigger):
            line += f" (trigger {trigger[0]:.3f} -> {trigger[1]:.3f})"
    return line


def unique_rows(rows: list[dict]) -> list[dict]:
    """One row per (attack, defense, eval set, seed): a cached model evaluated again by another
    recipe (e.g. the cross-dataset one) is the same measurement; the row with PR is kept."""
    kept: dict[tuple, dict] = {}
    for row in rows:
        key = (row["model"], row["attack"], row["defense"], row["eval_set"], row["seed"])
        if key not in kept or (math.isnan(kept[key]["pr"]) and not math.isnan(row["pr"])):
            kept[key] = row
    return list(kept.values())


def write_defenses(rows: list[dict], sources: list[str], out: Path, ledger_name: str) -> str:
    rows = sorted(
        unique_rows(rows), key=lambda r: (r["model"], r["attack"], str(r["seed"]), r["eval_set"])
    )
    with (out / "defenses.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=DEFENSE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    headers = ["model", "attack", "defense", "eval set", "seed", "CA %", "ASR %", "asr_all %", "PR"]
    headers.append("PR (trigger)")
    body = [
        [r["model"], r["attack"], r["defense"], r["eval_set"], r["seed"], r["ca"], r["asr"]]
        + [r["asr_all"]]
        + [_three(r["pr"]), _three(r.get("pr_trigger", math.nan))]
        for r in rows
    ]
    checks = verdicts(rows)
    text = (
        '# Defenses on poisoned mini-CLIP (target "accordion", zero-shot)\n\n'
        + markdown_table(headers, body)
        + "\n\nCA: top-1 on clean test images. ASR: triggered test images whose true class is not"
        " the target, predicted as the target (asr_all: over all images). PR: Perturbation"
        " Resistivity under a random 16/224-scaled noise patch (RVPT Eq. 1; 5 px at 64 px, which"
        " moves mini-CLIP's features very little, so it sits near 1 everywhere); PR (trigger):"
        " the same ratio with the run's trigger as the perturbation. Higher is more resistant."
        " `none` is the attacked model before any defense.\n\n"
        + ("RVPT against the bar:\n\n" + "\n".join(checks) + "\n\n" if checks else "")
        + provenance("defenses", ledger_name, sources)
    )
    (out / "defenses.md").write_text(text)
    return text


def _rows(metrics: dict, config: dict, folder) -> list[dict]:
    from clip_backdoor.reports.poisoning import trigger_label

    return defense_rows(metrics, config, trigger_label)


TABLE = Table(
    "defenses",
    _rows,
    write_defenses,
    section="Xu et al. (RVPT) and the fine-tuning defenses",
    stages=("defense", frozenset({"rvpt", "vpt", "cleanclip", "linear_probe", "ft"})),
)
