"""Run a matrix's missing cells: here one after the other, or one submitit job per cell.

Jobs go through submitit (Slurm via its ``AutoExecutor``; ``LocalExecutor`` and
``DebugExecutor`` run the same path without a cluster). Each job runs one cell's recipe in one
process, as ``clip-backdoor run`` does; what it trains resumes from the engine's checkpoints in
the cache, so a killed or timed-out cell completes when the matrix is called again.
"""

from __future__ import annotations

import fnmatch
import time
from pathlib import Path

from clip_backdoor.core.errors import ConfigError, UserError
from clip_backdoor.matrix.gate import failed_attacks, skip_reason
from clip_backdoor.matrix.pace import remaining_time
from clip_backdoor.matrix.spec import NONE, Cell, MatrixRecipe, expand


def run_cell(recipe: dict) -> str:
    """One cell (a job's entry point: picklable, imports inside)."""
    from clip_backdoor.pipeline.recipes import parse_recipe
    from clip_backdoor.pipeline.runner import run_recipe

    return str(run_recipe(parse_recipe(recipe, f"cell {recipe['name']}"), progress=False).path)


def executor_for(matrix: MatrixRecipe, folder: Path):
    """The submitit executor of the recipe's launcher, with its resource requests."""
    launcher = matrix.launcher
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            f"launcher '{launcher.kind}' needs submitit, which is not installed "
            "(pip install submitit==1.5.4)"
        ) from None
    if launcher.kind == "debug":
        return submitit.DebugExecutor(folder=str(folder))
    if launcher.kind == "submitit_local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(
            timeout_min=launcher.timeout_min, gpus_per_node=launcher.gpus_per_node
        )
        return executor
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    if executor.cluster != "slurm":
        raise ConfigError("launcher 'slurm': no Slurm here (sbatch not found); use 'local'")
    executor.update_parameters(
        timeout_min=launcher.timeout_min,
        gpus_per_node=launcher.gpus_per_node,
        cpus_per_task=launcher.cpus_per_task,
        mem_gb=launcher.mem_gb,
        slurm_partition=launcher.partition,
        slurm_array_parallelism=launcher.parallel,
        name=matrix.name,
    )
    return executor


def run_matrix(
    matrix: MatrixRecipe,
    source: str,
    launcher: str | None = None,
    log=print,
    only: str | None = None,
) -> dict:
    """Expand, skip the finished cells, run the rest; returns {cell name: run folder}, less the
    cells of an attack and seed that did not implant (``min_attack_asr``, see ``gate``).

    ``only``: a shell pattern on cell names, for a slice of a grid too big for one sitting."""
    if launcher is not None:
        matrix = matrix.model_copy(
            update={"launcher": matrix.launcher.model_copy(update={"kind": launcher})}
        )
    cells = selected_cells(matrix, source, only)
    root = Path(matrix.runs_root) / matrix.name
    done = {c.name: c.folder(root) for c in cells}
    missing = [c for c in cells if done[c.name] is None]
    stale = sum(c.stale(root) for c in missing)
    log(
        f"matrix {matrix.name}: {len(cells)} cells, {len(cells) - len(missing)} done, "
        f"{len(missing)} to run ({matrix.launcher.kind})"
        + (f", {stale} of them again since their recipe changed" if stale else "")
    )
    start = time.perf_counter()
    gate = matrix.matrix.min_attack_asr
    failed = failed_attacks(cells, root, gate)
    if matrix.launcher.kind == "local":
        for index, cell in enumerate(missing, 1):
            why = skip_reason(cell, failed, gate)
            if why:
                log(f"[{index}/{len(missing)}] {cell.name}: not run, {why}")
                continue
            log(f"[{index}/{len(missing)}] {cell.name}")
            done[cell.name] = Path(run_cell(cell.recipe))
            failed.update(failed_attacks([cell], root, gate))  # a none cell just run
    elif missing:
        executor = executor_for(matrix, root / "submitit")
        waves = [missing]
        if gate is not None:  # the none cells first: they decide which of the rest run
            waves = [[c for c in missing if c.kind == NONE], [c for c in missing if c.kind != NONE]]
        for wave in waves:
            failed, runnable = failed_attacks(cells, root, gate), []
            for cell in wave:
                if why := skip_reason(cell, failed, gate):
                    log(f"{cell.name}: not run, {why}")
                else:
                    runnable.append(cell)
            done.update(_run_jobs(executor, runnable))
    ran = sum(f is not None for f in done.values())
    log(
        f"matrix {matrix.name}: complete in {time.perf_counter() - start:.1f} s"
        + (
            f" ({len(done) - ran} cells not run: their attack did not implant)"
            if ran < len(done)
            else ""
        )
    )
    return {name: folder for name, folder in done.items() if folder is not None}


def _run_jobs(executor, cells: list[Cell]) -> dict:
    """{cell name: run folder} of ``cells``, one submitit job each; a failed job names its cell."""
    found = {}
    for cell, job in zip(cells, _submit(executor, cells) if cells else [], strict=True):
        try:
            found[cell.name] = Path(job.result())
        except Exception as e:  # a failed job: say which cell, keep the others
            raise UserError(f"matrix cell {cell.name} failed: {str(e).splitlines()[-1]}") from None
    return found


def selected_cells(matrix: MatrixRecipe, source: str, only: str | None) -> list[Cell]:
    """The matrix's cells, or those whose name matches the shell pattern ``only``."""
    cells = expand(matrix, source)
    if only is None:
        return cells
    chosen = [c for c in cells if fnmatch.fnmatchcase(c.name, only)]
    if not chosen:
        raise ConfigError(
            f"--cells '{only}' matches none of the {len(cells)} cells of {matrix.name} "
            f"(they are named like {cells[0].name})"
        )
    return chosen


def matrix_status(matrix: MatrixRecipe, source: str, only: str | None = None) -> str:
    """Which cells are done, to run, or to run again (recipe changed), per attack and seed:
    what a call would run, without running it."""
    cells = selected_cells(matrix, source, only)
    root = Path(matrix.runs_root) / matrix.name
    rows: dict[tuple[str, int], list[str]] = {}
    todo_columns, skipped = [], {}  # skipped: {(attack, seed): why}
    gate = matrix.matrix.min_attack_asr
    failed = failed_attacks(cells, root, gate)
    for cell in cells:
        state = "done" if cell.folder(root) else "stale" if cell.stale(root) else "missing"
        if state != "done" and (why := skip_reason(cell, failed, gate)):
            skipped[(cell.attack, cell.seed)] = why
            continue
        rows.setdefault((cell.attack, cell.seed), []).append(
            state if state == "done" else f"{cell.column} ({state})"
        )
        if state != "done":
            todo_columns.append(cell.column)
    lines = [f"matrix {matrix.name} under {root}: attack, seed: cells done / cells; to run"]
    for (attack, seed), states in rows.items():
        todo = [s for s in states if s != "done"]
        partly = todo and len(todo) < len(states) or any("stale" in s for s in todo)
        why = skipped.get((attack, seed))
        not_run = f" (the rest not run: {why})" if why else ""
        lines.append(
            f"  {attack} s{seed}: {len(states) - len(todo)}/{len(states)}"
            + (f"; {', '.join(todo)}" if partly else "")
            + not_run
        )
    left = len(todo_columns)
    finished = sum(s == "done" for states in rows.values() for s in states)
    n_skipped = len(cells) - left - finished
    lines.append(
        f"{finished} of {len(cells)} cells done, {left} to run"
        + (f", {n_skipped} not run (their attack did not implant)" if n_skipped else "")
    )
    if left:
        untrained = sum(all(s != "done" for s in states) for states in rows.values())
        lines.append(
            f"to run: {remaining_time(root, todo_columns, untrained)}"
            + (", less for each attack that does not implant" if gate is not None else "")
        )
    return "\n".join(lines)


def _submit(executor, cells: list[Cell]) -> list:
    if hasattr(executor, "batch") and not type(executor).__name__.startswith("Debug"):
        with executor.batch():
            jobs = [executor.submit(run_cell, cell.recipe) for cell in cells]
        return jobs
    return [executor.submit(run_cell, cell.recipe) for cell in cells]
