"""What every summary table shares: reading a run folder, percentages, and the table protocol.

A table is one small module of ``reports`` with a ``TABLE``: how to turn one run folder into
rows, and how to write ``results/<name>.md`` / ``.csv`` from the rows of every recorded run.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from clip_backdoor.core.errors import UserError
from clip_backdoor.core.runs import (  # noqa: F401  (the tables' shared writers)
    config_model,
    markdown_table,
    provenance,
    write_csv,
)


@dataclass(frozen=True)
class Table:
    name: str
    rows: Callable[[dict, dict, Path], list[dict]]  # (metrics, config, run folder) -> rows
    write: Callable[[list[dict], list[str], Path, str], str]  # (rows, sources, out, ledger)
    source_note: Callable[[dict], str] | None = None  # more provenance from a run's metrics
    # one run per run name and seed: a later run of a recipe replaces the earlier one (where each
    # run is one point, e.g. one model of the scan zoo's ROC, and must not be counted twice)
    latest_run_only: bool = False
    # the HTML report's section: its title, and the stages of the runs it reports (a stage kind
    # and the methods of it, None: any); a table without a section is not in the report
    section: str | None = None
    stages: tuple[str, frozenset[str] | None] | None = None


def read_run(folder: Path) -> tuple[dict, dict]:
    """(metrics, config) of a finished run folder, or a one-line error."""
    metrics_file, config_file = folder / "metrics.json", folder / "config.yaml"
    if not metrics_file.is_file() or not config_file.is_file():
        raise UserError(f"{folder} is not a finished run folder (no metrics.json/config.yaml)")
    return json.loads(metrics_file.read_text()), yaml.safe_load(config_file.read_text())


def finished_runs(folders: list[str]) -> list[Path]:
    """The finished run folders of ``folders``, skipping (and naming on stderr) the unfinished
    ones: a matrix cell killed mid-run leaves a folder with config.yaml and no metrics.json,
    and a glob over the matrix must still summarise; a folder that is no run is an error."""
    finished, unfinished = [], []
    for name in folders:
        folder = Path(name)
        if (folder / "metrics.json").is_file() and (folder / "config.yaml").is_file():
            finished.append(folder)
        elif (folder / "config.yaml").is_file() and (folder / "log.txt").is_file():
            unfinished.append(folder)
        else:
            read_run(folder)  # the one-line error
    if unfinished:
        print(
            f"skipped {len(unfinished)} unfinished run folder(s) (no metrics.json: killed, "
            f"failed or still running): {', '.join(f.name for f in unfinished)}",
            file=sys.stderr,
        )
    return finished


def pct(value) -> float:
    """A rate as a percentage (NaN where it was not measured)."""
    return math.nan if value is None else 100 * float(value)
