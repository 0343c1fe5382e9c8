"""How long the rest of a matrix will take, from how long its finished cells took.

A full grid runs for hours on a CPU; ``--status`` says how many of them are left. Each finished
cell's time is read from its log (first to last timestamp), and every cell still to run is given
the median time of the finished cells of its column (the same defense or detector on another
attack or seed: the same work on the same data). An attack is trained once, by the first cell
that needs it, and is then in the cache: its training is not in a column's median.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from pathlib import Path

STAMP = "%Y-%m-%d %H:%M:%S,%f"


def cell_seconds(folder: Path) -> float | None:
    """Wall-clock seconds a finished run took, from its log's first and last timestamps."""
    log = folder / "log.txt"
    if not (folder / "metrics.json").is_file() or not log.is_file():
        return None
    stamps = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            stamps.append(datetime.strptime(line[:23], STAMP))
        except ValueError:
            continue  # a traceback or a wrapped message: no timestamp
    return (stamps[-1] - stamps[0]).total_seconds() if stamps else None


def column_paces(root: Path, columns: set[str]) -> dict[str, float]:
    """Median seconds of the finished cell folders of each column under ``root``."""
    times: dict[str, list[float]] = {}
    for folder in root.glob("*--*--s*"):
        column = folder.name.split("--")[-2]
        if column in columns and (seconds := cell_seconds(folder)) is not None:
            times.setdefault(column, []).append(seconds)
    return {column: statistics.median(t) for column, t in times.items()}


def remaining_time(root: Path, todo_columns: list[str]) -> str:
    """``about 2.5 h`` for the cells still to run (one column name per cell), saying which
    were not counted because no cell of their column has finished yet."""
    paces = column_paces(root, set(todo_columns))
    seconds = sum(paces.get(column, 0.0) for column in todo_columns)
    unknown = sum(column not in paces for column in todo_columns)
    said = (
        f"about {_duration(seconds)} at the median time of the finished cells of each column, "
        "plus the training of attacks not in the cache"
    )
    if unknown:
        said += f" ({unknown} cells of columns with none finished not counted)"
    return said


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
