"""The compatibility table: every method on a tiny model of every family, run, not declared.

``clip-backdoor compat`` runs ``family_recipe`` on each family's tiny model (the same call its
test makes, ``tests/test_compat.py``), renders the HTML report of the run, and writes
``results/compatibility.md``/``.csv`` and the table in docs/models.md between its markers. A cell
reads "runs" only when the method's stage finished in that run; one that cannot apply says why.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from clip_backdoor.compat.methods import ENCODE_LEVEL, METHODS, Method, applies
from clip_backdoor.compat.recipe import family_recipe, matrix_recipe, stage_of, tower_recipe
from clip_backdoor.core.errors import first_line
from clip_backdoor.models.families import FAMILIES
from clip_backdoor.reports.html import write_report

TEST = "tests/test_compat.py::test_every_encode_level_method_runs"
README_START, README_END = "<!-- compat:start -->", "<!-- compat:end -->"


@dataclass
class FamilyRun:
    tiny: str
    family: str
    run: Path | None = None
    error: str | None = None
    failed_stage: str | None = None
    seconds: float = 0.0
    cells: dict[str, str] = field(default_factory=dict)


def stage_key(method: Method) -> str | None:
    stage = stage_of(method)
    return None if stage is None else f"{stage['kind']}.{stage['label']}"


def run_family(tiny: str, runs_root: str | Path, progress: bool = False) -> FamilyRun:
    """Every encode-level method that applies on ``tiny`` (one recipe) and the report of that
    run; then each tower-level method that applies, in a recipe of its own (so that one that
    fails does not hide the others)."""
    from clip_backdoor.models import load_clip

    model = load_clip(tiny).model
    result = FamilyRun(tiny, model.family)
    recipe = family_recipe(model, tiny, str(runs_root), name=f"compat-{tiny}")
    started = time.perf_counter()
    run, error = _run(recipe, progress)
    result.run = run.path if run is not None else None
    report_ok = False
    if run is not None:
        write_report([str(run.path)], run.path / "report")
        report_ok = (run.path / "report" / "index.html").is_file()
        finished = set(run.metrics.get("stage_seconds", {}))
    else:
        stages = _log_stages(runs_root, f"compat-{tiny}")
        result.error, result.failed_stage = error, (stages[-1] if stages else None)
        finished = _finished_stages(runs_root, f"compat-{tiny}", recipe)
    for method in METHODS:
        ok, reason = applies(model, method)
        if not ok:
            result.cells[method.name] = reason
        elif method.kind == "matrix":
            result.cells[method.name] = _run_matrix(tiny, runs_root)
        elif method in ENCODE_LEVEL:
            done = {"eval": run is not None or bool(finished), "report": report_ok}.get(
                method.kind, stage_key(method) in finished
            )
            result.cells[method.name] = "runs" if done else f"fails: {result.error}"
        else:
            label = f"compat-{tiny}-{stage_of(method)['label']}"
            tower, error = _run(tower_recipe(tiny, method, str(runs_root), label), progress)
            result.cells[method.name] = "runs" if tower is not None else f"fails: {error}"
    result.seconds = time.perf_counter() - started
    return result


def _run_matrix(tiny: str, runs_root: str | Path) -> str:
    """'runs' when the family's 3-cell matrix (``matrix_recipe``) ran every cell."""
    from clip_backdoor.matrix.launch import run_matrix
    from clip_backdoor.matrix.spec import parse_matrix

    name = f"compat-matrix-{tiny}"
    try:
        matrix = parse_matrix(matrix_recipe(tiny, str(runs_root), name), name)
        folders = run_matrix(matrix, name, "local", log=lambda *_: None)
    except Exception as e:
        return f"fails: {type(e).__name__}: {first_line(e)}"
    done = [f for f in folders.values() if (Path(f) / "metrics.json").is_file()]
    return "runs" if len(done) == 3 else f"fails: {len(done)} of 3 cells ran"


def _run(recipe: dict, progress: bool):
    """(run result, None) or (None, the error's first line): a failing method is a cell."""
    from clip_backdoor.pipeline.recipes import parse_recipe
    from clip_backdoor.pipeline.runner import run_recipe

    try:
        return run_recipe(parse_recipe(recipe, f"recipe {recipe['name']}"), progress), None
    except Exception as e:
        return None, f"{type(e).__name__}: {first_line(e)}"


def _log_stages(runs_root: str | Path, name: str) -> list[str]:
    """The 'stage ...' lines of the last log of runs named ``name``, in order."""
    folders = sorted(Path(runs_root).glob(f"*-{name}"))
    if not folders or not (folders[-1] / "log.txt").is_file():
        return []
    lines = (folders[-1] / "log.txt").read_text().splitlines()
    return [line.split(" stage ", 1)[1].split(" {", 1)[0] for line in lines if " stage " in line]


def _finished_stages(runs_root: str | Path, name: str, recipe: dict) -> set[str]:
    """The stages a failed run finished: every one started before the last one started."""
    started = len(_log_stages(runs_root, name))
    return {f"{s['kind']}.{s['label']}" for s in recipe["stages"][: max(0, started - 1)]}


def markdown(results: list[FamilyRun]) -> str:
    """Methods as rows, families as columns; the test each family's column comes from."""
    head = "| method | " + " | ".join(r.family for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    for method in METHODS:
        cells = [_short(r.cells.get(method.name, "")) for r in results]
        lines.append(f"| {method.name} | " + " | ".join(cells) + " |")
    notes = [
        "",
        f"Each column is `run_family` on the family's tiny model, the call `{TEST}[TINY]` "
        "makes (TINY: " + ", ".join(f"`{r.tiny}`" for r in results) + "): the family's own "
        "architecture code (open_clip, timm or transformers) with width and depth shrunk, at "
        "32-64 px, randomly initialised; every method a step or two (`compat/recipe.py`). "
        "**runs**: its stage finished in that run. **does not apply**: the convolutional towers "
        "have no tokens or heads to prompt or split. Written by `clip-backdoor compat`.",
    ]
    failed = [r for r in results if r.error]
    for r in failed:
        notes.append(f"- {r.family}: failed in `{r.failed_stage}`: {r.error}")
    return "\n".join(lines + notes) + "\n"


def _short(cell: str) -> str:
    if cell.startswith("does not apply"):
        return "does not apply" + (" (convolutional)" if "convolutional" in cell else "")
    return cell.replace("|", "/")


def write_table(results: list[FamilyRun], out: Path, readme: Path | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    (out / "compatibility.md").write_text("# Compatibility: method x family\n\n" + text)
    with open(out / "compatibility.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["family", "tiny_model", "method", "cell", "test", "seconds"])
        for r in results:
            for method in METHODS:
                cell = r.cells.get(method.name, "")
                test = f"{TEST}[{r.tiny}]" if cell == "runs" else ""
                writer.writerow([r.family, r.tiny, method.name, cell, test, f"{r.seconds:.1f}"])
    (out / "compatibility_runs.json").write_text(
        json.dumps({r.tiny: str(r.run) if r.run else None for r in results}, indent=2) + "\n"
    )
    if readme is not None and readme.is_file():
        body = readme.read_text()
        if README_START in body and README_END in body:
            before, rest = body.split(README_START, 1)
            after = rest.split(README_END, 1)[1]
            readme.write_text(f"{before}{README_START}\n{text}{README_END}{after}")
    return out / "compatibility.md"


def run_table(
    runs_root: str | Path, out: Path, readme: Path | None, only: list[str] | None = None
) -> tuple[Path, list[FamilyRun]]:
    families = [f.tiny for f in FAMILIES if only is None or f.tiny in only]
    results = []
    for tiny in tqdm(families, desc="families"):
        results.append(run_family(tiny, runs_root))
    return write_table(results, out, readme), results
