"""``results/matrix.md`` / ``.csv``: the attack x defense grid (ASR with CA) and the detectors.

Rows come from a matrix's cell run folders (their ``matrix_cell`` says which cell they are):
a defense cell gives the CA and ASR after it, the ``none`` column the attacked model's, a
detector cell its AUROC, a scan cell its verdict. The grid shows seed means, with half the
range over seeds where a cell has two, so that a reader sees how far one seed moves it.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from clip_backdoor.core.errors import UserError
from clip_backdoor.reports.common import (
    Table,
    config_model,
    markdown_table,
    pct,
    provenance,
    write_csv,
)

MATRIX_COLUMNS = ["attack", "defense", "detector", "ca", "asr", "auroc", "seed", "run"]
MATRIX_COLUMNS += ["verdict", "model"]


def matrix_rows(metrics: dict, config: dict, folder: Path) -> list[dict]:
    cell = config.get("matrix_cell")
    if not cell:
        raise UserError(f"{folder} is not a matrix cell (no matrix_cell in its config.yaml)")
    points = metrics.get("points", [])
    last = points[-1] if points else {}
    row = {
        "attack": cell["attack"],
        "defense": "none",
        "detector": "-",
        "ca": math.nan,
        "asr": math.nan,
        "auroc": math.nan,
        "seed": config.get("seed"),
        "run": folder.name,
        "verdict": "-",
        "model": config_model(config),
    }
    if cell["kind"] in ("none", "defense"):
        row.update(defense=cell["column"], ca=pct(last.get("ca")), asr=pct(last.get("asr")))
    elif cell["kind"] == "detection":
        found = metrics.get(f"detection.{cell['column']}", {})
        row.update(detector=cell["column"], auroc=found.get("auroc", math.nan))
    else:
        found = metrics.get(f"scan.{cell['column']}", {})
        row.update(detector=cell["column"], verdict=found.get("verdict", "-"))
    return [row]


def mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def half_range(values: list[float]) -> float:
    """Half the spread over seeds (NaN for one seed): with two seeds, the mean +- this spans
    both numbers."""
    values = [v for v in values if not math.isnan(v)]
    return (max(values) - min(values)) / 2 if len(values) > 1 else math.nan


def grid(
    rows: list[dict], value: str, column: str, statistic=mean
) -> tuple[list[str], list[str], dict]:
    """(attacks, columns, {(attack, column): ``statistic`` over seeds of ``value``})."""
    attacks = sorted({r["attack"] for r in rows if r[column] not in ("-",)})
    columns = sorted({r[column] for r in rows if r[column] != "-"}, key=lambda c: (c != "none", c))
    cells = {
        (a, c): statistic([r[value] for r in rows if r["attack"] == a and r[column] == c])
        for a in attacks
        for c in columns
    }
    return attacks, columns, cells


def with_seeds(rows: list[dict], attack: str) -> str:
    """The attack's row label with the seeds its means are over, since a grid being filled
    holds one seed for some attacks and two for others."""
    seeds = sorted({str(r["seed"]) for r in rows if r["attack"] == attack})
    return f"{attack} (s{', s'.join(seeds)})"


def write_matrix(rows: list[dict], sources: list[str], out: Path, ledger_name: str) -> str:
    rows = sorted(
        rows, key=lambda r: (r["model"], r["attack"], r["defense"], r["detector"], str(r["seed"]))
    )
    write_csv(out / "matrix.csv", MATRIX_COLUMNS, rows)
    text = "# The benchmark matrix: every attack x every defense and detector\n\n"
    defended = [r for r in rows if r["detector"] == "-"]
    if defended:
        attacks, columns, asr = grid(defended, "asr", "defense")
        _, _, ca = grid(defended, "ca", "defense")
        _, _, spread = grid(defended, "asr", "defense", half_range)
        _, _, seeds = grid(defended, "seed", "defense", _seed_list)
        body = [
            [with_seeds(defended, a)]
            + [
                _pair(asr[(a, c)], ca[(a, c)], spread[(a, c)])
                + _fewer(seeds[(a, c)], with_seeds(defended, a))
                for c in columns
            ]
            for a in attacks
        ]
        text += (
            "ASR % / CA % after each defense (mean over seeds, the ASR's +- half its range over "
            "seeds where there are two; `none`: the attacked model):\n\n"
        )
        text += markdown_table(["attack"] + columns, body) + "\n\n"
        text += _only_none(rows)  # detector cells count: an attack-seed they ran is not alone
    detected = [r for r in rows if r["detector"] != "-" and not math.isnan(r["auroc"])]
    if detected:
        attacks, columns, auroc = grid(detected, "auroc", "detector")
        _, _, spread = grid(detected, "auroc", "detector", half_range)
        _, _, seeds = grid(detected, "seed", "detector", _seed_list)
        body = [
            [with_seeds(detected, a)]
            + [
                _three(auroc[(a, c)], spread[(a, c)])
                + _fewer(seeds[(a, c)], with_seeds(detected, a))
                for c in columns
            ]
            for a in attacks
        ]
        text += "Input detectors, AUROC (mean over seeds, +- half the range):\n\n"
        text += markdown_table(["attack"] + columns, body) + "\n\n"
    scanned = [r for r in rows if r["verdict"] != "-"]
    if scanned:
        body = [[r["attack"], r["detector"], r["seed"], r["verdict"]] for r in scanned]
        text += markdown_table(["attack", "scanner", "seed", "verdict"], body) + "\n\n"
    text += provenance("matrix", ledger_name, sources)
    (out / "matrix.md").write_text(text)
    return text


def _seed_list(seeds: list) -> str:
    return "s" + ", s".join(sorted(str(s) for s in seeds)) if seeds else ""


def _fewer(seeds: str, row_label: str) -> str:
    """`` (s0)`` after a cell over fewer seeds than its row's label names, else ""."""
    return f" ({seeds})" if seeds and not row_label.endswith(f"({seeds})") else ""


def _only_none(rows: list[dict]) -> str:
    """Name the attacks and seeds run with their ``none`` cell alone: a matrix with
    ``min_attack_asr`` runs no other cell of an attack that did not implant."""
    by_seed: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by_seed.setdefault((r["attack"], str(r["seed"])), []).append(r)
    alone = [
        f"{attack} s{seed} (ASR {own[0]['asr']:.1f})"
        for (attack, seed), own in sorted(by_seed.items())
        if len(own) == 1 and own[0]["defense"] == "none" and own[0]["detector"] == "-"
    ]
    if not alone or len(alone) == len(by_seed):
        return ""
    return (
        "Run with the attacked model alone, so not defended or detected (a matrix's "
        f"`min_attack_asr` skips an attack that did not implant): {', '.join(alone)}.\n\n"
    )


def _pair(asr: float, ca: float, spread: float = math.nan) -> str:
    if math.isnan(asr) and math.isnan(ca):
        return "-"
    return f"{asr:.1f}" + ("" if math.isnan(spread) else f" ± {spread:.1f}") + f" / {ca:.1f}"


def _three(value: float, spread: float = math.nan) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" + ("" if math.isnan(spread) else f" ± {spread:.3f}")


# latest_run_only: a cell run again (killed, or its recipe changed) replaces its earlier run
TABLE = Table("matrix", matrix_rows, write_matrix, latest_run_only=True)
