"""``clip-backdoor report RUNS... -o report/``: one self-contained HTML page from run folders.

The page (Jinja2 template ``templates/report.html.j2``; inline CSS, figures embedded as data
URIs, no server, no network) holds: the attack x defense grid as a heat map of ASR with CA
beside it; one section per paper with its table as ``results/`` lays it out (the same report
modules write both); the detectors' ROC curves; every trigger rendered. Every number links to
the run folder it came from and names its recipe, commit, seed and machine.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from clip_backdoor.core.errors import UserError
from clip_backdoor.reports.common import config_model, finished_runs, read_run
from clip_backdoor.reports.matrix import half_range, mean
from clip_backdoor.reports.matrix_roc import detection_cell, matrix_roc_figures
from clip_backdoor.reports.trigger_view import stretched_difference


def applies(config: dict, stages: tuple[str, frozenset[str] | None]) -> bool:
    """Whether a run has a stage of the section's kind (and one of its methods)."""
    kind, methods = stages
    return any(
        s.get("kind") == kind and (methods is None or s.get("method") in methods)
        for s in config.get("stages", [])
    )


@dataclass
class Source:
    """Where a number came from: shown on hover, linked to its run folder."""

    run: str
    href: str
    recipe: str
    commit: str
    seed: object
    machine: str

    @property
    def title(self) -> str:
        return (
            f"run {self.run} | recipe {self.recipe} | commit {self.commit} | seed {self.seed} | "
            f"{self.machine}"
        )


@dataclass
class Run:
    folder: Path
    metrics: dict
    config: dict
    source: Source
    figures: dict[str, Path] = field(default_factory=dict)


def load_runs(folders: list[str], out: Path) -> list[Run]:
    """The finished run folders (unfinished ones skipped and named), or a one-line error
    naming the first folder that is no run."""
    runs = []
    for folder in finished_runs(folders):
        metrics, config = read_run(folder)
        versions = config.get("versions", {})
        href = Path(_relative(folder.resolve(), out.resolve())).as_posix()
        source = Source(
            folder.name,
            href,
            str(config.get("recipe_file") or config.get("name")),
            str(versions.get("commit", "?")),
            config.get("seed"),
            str(versions.get("cpu", "?")),
        )
        figures = {p.stem: p for p in sorted((folder / "figures").glob("*.png"))}
        runs.append(Run(folder, metrics, config, source, figures))
    if not runs:
        raise UserError("no run folders given to report on")
    return newest_cells(runs)


def newest_cells(runs: list[Run]) -> list[Run]:
    """Each matrix cell once: a cell run again (killed, or its recipe changed) leaves an earlier
    finished folder, and a grid mean must not count one cell twice."""
    newest: dict[tuple, Run] = {}
    for run in sorted(runs, key=lambda r: r.folder.name):  # folder names start with the time
        cell = run.config.get("matrix_cell")
        key = (
            (cell["matrix"], run.config.get("name"), run.config.get("seed"))
            if cell
            else str(run.folder)
        )
        newest[key] = run
    kept = set(map(id, newest.values()))
    return [run for run in runs if id(run) in kept]


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def heat(asr: float) -> str:
    """Background of an ASR cell: white (0%) to red (100%), grey where not measured."""
    if asr is None or math.isnan(asr):
        return "#eeeeee"
    level = max(0.0, min(1.0, asr / 100))
    return f"rgb(255,{round(255 - 175 * level)},{round(255 - 195 * level)})"


def grid(runs: list[Run]) -> dict:
    """(Model, attack) x defense cells of ASR and CA (seed means), with the runs behind each."""
    from clip_backdoor.reports.defenses import attack_label
    from clip_backdoor.reports.poisoning import trigger_label

    cells: dict[tuple[str, str], list[tuple[float, float, Source]]] = {}
    for run in runs:
        model = config_model(run.config)  # never a mean over two measuring models
        cell = run.config.get("matrix_cell")
        points = [p for p in run.metrics.get("points", []) if p["kind"] in ("attack", "defense")]
        if cell and cell["kind"] in ("none", "defense") and points:
            last = points[-1]
            key = (f"{model} · {cell['attack']}", cell["column"])
            cells.setdefault(key, []).append((_pct(last.get("asr")), _pct(last["ca"]), run.source))
            continue
        if cell or not points:
            continue
        attack = f"{model} · {attack_label(run.config, trigger_label)}"
        for point in points:
            defense = "none" if point["kind"] == "attack" else point["point"]
            entry = (_pct(point.get("asr")), _pct(point["ca"]), run.source)
            cells.setdefault((attack, defense), []).append(entry)
    detected: dict[tuple[str, str], list[tuple[float, Source]]] = {}
    for run in runs:
        cell = run.config.get("matrix_cell")
        if cell and cell["kind"] == "detection":
            found = run.metrics.get(f"detection.{cell['column']}", {})
            key = (f"{config_model(run.config)} · {cell['attack']}", cell["column"])
            detected.setdefault(key, []).append((found.get("auroc", math.nan), run.source))
    return {**_grid_rows(cells), "detection": _auroc_rows(detected)}


def _auroc_rows(detected: dict) -> dict:
    """(Model, attack) x detector AUROC of the matrix's detection cells (seed means)."""
    attacks = sorted({a for a, _ in detected})
    detectors = sorted({d for _, d in detected})
    rows = []
    for attack in attacks:
        row = []
        for detector in detectors:
            entries = detected.get((attack, detector), [])
            aurocs = [e[0] for e in entries]
            sources = [e[1] for e in entries]
            cell = {"auroc": mean(aurocs), "spread": _spread(aurocs, "{:.3f}"), "sources": sources}
            row.append(cell if entries else None)
        rows.append({"attack": attack, "seeds": seeds_of(row), "cells": row})
    return {"detectors": detectors, "rows": _partial_cells(rows)}


def _partial_cells(rows: list[dict]) -> list[dict]:
    """Name the seeds of a cell that has fewer than its row (a row still being filled); ""
    where it has the row's."""
    for row in rows:
        for cell in filter(None, row["cells"]):
            own = seeds_of([cell])
            cell["seeds"] = "" if own == row["seeds"] else own
    return rows


def _grid_rows(cells: dict) -> dict:
    attacks = sorted({a for a, _ in cells})
    defenses = sorted({d for _, d in cells}, key=lambda d: (d != "none", d))
    table = []
    for attack in attacks:
        row = []
        for defense in defenses:
            entries = cells.get((attack, defense), [])
            if not entries:
                row.append(None)
                continue
            asrs = [e[0] for e in entries]
            asr, ca = mean(asrs), mean([e[1] for e in entries])
            sources = [e[2] for e in entries]
            spread = _spread(asrs, "{:.1f}")
            row.append(
                {"asr": asr, "ca": ca, "colour": heat(asr), "spread": spread, "sources": sources}
            )
        table.append({"attack": attack, "seeds": seeds_of(row), "cells": row})
    return {"defenses": defenses, "rows": _partial_cells(table)}


def seeds_of(row: list[dict | None]) -> str:
    """The seeds a row's means are over (``s0, s1``): a grid being filled mixes one and two."""
    seeds = {str(s.seed) for cell in row if cell for s in cell["sources"]}
    return ", ".join(f"s{seed}" for seed in sorted(seeds))


def _spread(values: list[float], form: str) -> str:
    """``± x``, half the range over seeds as in ``results/matrix.md``; "" for one seed."""
    spread = half_range(values)
    return "" if math.isnan(spread) else "± " + form.format(spread)


def _pct(value) -> float:
    return math.nan if value is None else 100 * float(value)


def paper_tables(runs: list[Run]) -> list[dict]:
    """Each paper's table from the runs it applies to, with the run behind every row."""
    from clip_backdoor.reports.summary import tables

    sections = []
    for name, table in tables().items():
        if table.section is None:
            continue
        title, stages = table.section, table.stages
        rows = []
        for run in runs:
            if run.config.get("matrix_cell") or not applies(run.config, stages):
                continue  # matrix cells are the grid's (each repeats its attack's row)
            try:
                found = table.rows(run.metrics, run.config, run.folder)
            except (UserError, KeyError, TypeError, ValueError, IndexError):
                continue  # the table does not apply to this run
            rows += [(row, run.source) for row in found if isinstance(row, dict)]
        if rows:
            columns = [c for c in rows[0][0] if not isinstance(rows[0][0][c], dict | list)]
            body = [
                {"cells": [_cell(row.get(c)) for c in columns], "source": source}
                for row, source in rows
            ]
            sections.append({"title": title, "name": name, "columns": columns, "rows": body})
    return sections


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return "-" if value is None else str(value)


def _percent(value: float) -> str:
    """A grid percentage, one decimal as in ``results/matrix.md``."""
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def figures(runs: list[Run], prefix: str) -> list[dict]:
    """Figures of the runs whose name starts with ``prefix``, embedded, with their run."""
    found = []
    for run in runs:
        for stem, path in run.figures.items():
            if stem.startswith(prefix):
                found.append(
                    {"name": stem, "uri": data_uri(path), "source": run.source, "path": path}
                )
    return found


def write_report(folders: list[str], out: str | Path) -> Path:
    out = Path(out)
    runs = load_runs(folders, out)  # every input checked before anything is written
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("clip_backdoor.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    own = [run for run in runs if not detection_cell(run)]  # matrix cells: shared axes instead
    triggers, seen = [], set()
    for figure in figures(runs, "trigger_"):
        if figure["name"] not in seen:  # one picture per trigger
            seen.add(figure["name"])
            difference, peak = stretched_difference(figure["path"])
            triggers.append({**figure, "difference": difference, "peak": peak})
    page = environment.get_template("report.html.j2").render(
        grid=grid(runs),
        papers=paper_tables(runs),
        matrix_rocs=matrix_roc_figures(runs, data_uri),
        rocs=figures(own, "roc") + figures(runs, "data_scan_roc") + figures(runs, "scan_roc"),
        triggers=triggers,
        runs=[r.source for r in runs],
        fmt=_cell,
        pct=_percent,
    )
    out.mkdir(parents=True, exist_ok=True)
    target = out / "index.html"
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(page)
    tmp.replace(target)
    return target
