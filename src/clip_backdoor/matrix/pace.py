"""How long the rest of a matrix will take, from how long its finished cells took.

A full grid runs for hours on a CPU; ``--status`` says how many of them are left. Each finished
cell's time is read from its log (first to last timestamp), and every cell still to run is given
the median time of the finished cells of its column (the same defense or detector on another
attack or seed: the same work on the same data). An attack is trained once, by the first cell
of its attack and seed, and then comes from the cache: a cell that trained its attack is timed
apart, and one such training is counted for each attack and seed with no finished cell yet.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from pathlib import Path

STAMP = "%Y-%m-%d %H:%M:%S,%f"
TRAINED = "(trained its attack)"  # the pool of cells that trained their attack


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


def trained_its_attack(folder: Path) -> bool:
    """Whether the run trained an attack stage rather than taking it from the cache."""
    metrics = json.loads((folder / "metrics.json").read_text())
    return any(
        key.startswith("attack.") and isinstance(value, dict) and value.get("reused") is False
        for key, value in metrics.items()
    )


def column_paces(root: Path) -> dict[str, float]:
    """Median seconds of the finished cell folders of each column under ``root``; cells that
    trained their attack go to the ``TRAINED`` pool instead of their column."""
    times: dict[str, list[float]] = {}
    for folder in root.glob("*--*--s*"):
        column = folder.name.split("--")[-2]
        if (seconds := cell_seconds(folder)) is not None:
            pool = TRAINED if trained_its_attack(folder) else column
            times.setdefault(pool, []).append(seconds)
    return {pool: statistics.median(t) for pool, t in times.items()}


def remaining_time(root: Path, todo: list[str], untrained: int) -> str:
    """``about 2.5 h`` for the cells still to run (``todo``: one column name per cell), with
    ``untrained`` attack trainings (attack-seeds with no finished cell), saying what was not
    counted because nothing like it has finished yet."""
    paces = column_paces(root)
    seconds = sum(paces.get(column, 0.0) for column in todo)
    unknown = sum(column not in paces for column in todo)
    if TRAINED in paces:
        seconds += untrained * paces[TRAINED]
    said = f"about {_duration(seconds)} at the median time of the finished cells of each column"
    if untrained:
        said += f", counting the training of {untrained} attacks (those with no finished cell)"
    missing = [f"{unknown} cells of columns with none finished"] if unknown else []
    if untrained and TRAINED not in paces:
        missing.append("the attacks' training (no finished cell trained one)")
    return said + (f" ({' and '.join(missing)} not counted)" if missing else "")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
