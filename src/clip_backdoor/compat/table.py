"""The compatibility table: every method on a tiny model of every family, run, not declared.

``clip-backdoor compat`` runs ``family_recipe`` on each family's tiny model (the same call its
test makes, ``tests/test_compat.py``), renders the HTML report of the run, and writes
``results/compatibility.md``/``.csv`` and the table in the README between its markers. A cell
reads "runs" only when the method's stage finished in that run; a tower-level method that does
not reach the family yet reads "next issue", one that cannot apply says why.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from clip_backdoor.compat.methods import METHODS, Method, applies
from clip_backdoor.compat.recipe import family_recipe, stage_of
from clip_backdoor.errors import first_line
from clip_backdoor.models.families import FAMILIES

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
    """Run every encode-level method that applies on ``tiny`` (one recipe), then the report."""
    from clip_backdoor.models import load_clip
    from clip_backdoor.recipes import parse_recipe
    from clip_backdoor.reports.html import write_report
    from clip_backdoor.runner import run_recipe

    model = load_clip(tiny).model
    result = FamilyRun(tiny, model.family)
    recipe = family_recipe(model, tiny, str(runs_root), name=f"compat-{tiny}")
    started = time.perf_counter()
    try:
        run = run_recipe(parse_recipe(recipe, f"compat recipe of {tiny}"), progress=progress)
        result.run = run.path
        write_report([str(run.path)], run.path / "report")
        finished = set(run.metrics.get("stage_seconds", {}))
        report_ok = (run.path / "report" / "index.html").is_file()
    except Exception as e:  # a failing method is a cell of the table, not the end of it
        result.error = f"{type(e).__name__}: {first_line(e)}"
        stages = _log_stages(runs_root, tiny)
        result.failed_stage = stages[-1] if stages else None
        finished, report_ok = _finished_stages(runs_root, tiny, recipe), False
    result.seconds = time.perf_counter() - started
    for method in METHODS:
        ok, reason = applies(model, method)
        if not ok:
            result.cells[method.name] = reason
            continue
        key = stage_key(method)
        if method.kind == "eval":
            done = result.run is not None or bool(finished)
        elif method.kind == "report":
            done = report_ok
        else:
            done = key in finished
        if done:
            result.cells[method.name] = "runs"
        else:
            result.cells[method.name] = f"fails: {result.error}" if result.error else "not run"
    return result


def _log_stages(runs_root: str | Path, tiny: str) -> list[str]:
    """The 'stage ...' lines of the family's last run log, in order."""
    folders = sorted(Path(runs_root).glob(f"*-compat-{tiny}"))
    if not folders or not (folders[-1] / "log.txt").is_file():
        return []
    lines = (folders[-1] / "log.txt").read_text().splitlines()
    return [line.split(" stage ", 1)[1].split(" {", 1)[0] for line in lines if " stage " in line]


def _finished_stages(runs_root: str | Path, tiny: str, recipe: dict) -> set[str]:
    """The stages a failed run finished: every one started before the last one started."""
    started = len(_log_stages(runs_root, tiny))
    return {f"{s['kind']}.{s['label']}" for s in recipe["stages"][: max(0, started - 1)]}


def markdown(results: list[FamilyRun]) -> str:
    """Methods as rows, families as columns; the test each family's column comes from."""
    head = "| method | " + " | ".join(r.family for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    for method in METHODS:
        cells = [_short(r.cells.get(method.name, "")) for r in results]
        lines.append(f"| {method.name} | " + " | ".join(cells) + " |")
    tests = ", ".join(f"`[{r.tiny}]`" for r in results)
    notes = [
        "",
        f"Each column is one run of `{TEST}` on the family's tiny model ({tests}): the same "
        "architecture code (open_clip, timm or transformers) with width and depth shrunk, at "
        "32-64 px, randomly initialised; every method a step or two (`compat/recipe.py`). "
        "**runs**: its stage finished in that run. **next issue**: a tower-level method that "
        "does not reach this family's towers yet (issue 52).",
    ]
    failed = [r for r in results if r.error]
    for r in failed:
        notes.append(f"- {r.family}: failed in `{r.failed_stage}`: {r.error}")
    return "\n".join(lines + notes) + "\n"


def _short(cell: str) -> str:
    if cell.startswith("next issue"):
        return "next issue"
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
