"""Does a re-run give the recorded numbers? ``clip-backdoor results TABLE RUNS --check``.

Each run folder's rows are compared with the rows the ledger (``OUT/<table>_runs.json``) holds
for the latest recorded run of the same recipe name and seed, number by number, exactly at the
precision each number was recorded with: anyone must be able to re-run a recipe and get the same
numbers. Wall-clock fields are left out. Nothing is written.
"""

from __future__ import annotations

import math
from pathlib import Path

from clip_backdoor.reports.common import finished_runs
from clip_backdoor.reports.summary import ledger_path, read_ledger, rerun_key, run_record

TIMING = ("seconds", "per_s")  # fields that measure the machine, not the method


def check_runs(table: str, runs: list[str], out: str | Path) -> tuple[str, bool]:
    """(a report, one line per run, and whether every number was reproduced)."""
    ledger = read_ledger(ledger_path(table, Path(out)))
    recorded = {rerun_key(record): record for _, record in sorted(ledger.items())}
    lines, reproduced = [], True
    for record in (run_record(table, folder) for folder in finished_runs(runs)):
        name, seed = rerun_key(record)
        old = recorded.get((name, seed))
        if old is None:
            lines.append(f"{record['run']}: no recorded run of {name}, seed {seed} in {out}")
            reproduced = False
            continue
        equal, changed = compare_rows(old["rows"], record["rows"])
        verdict = "reproduced" if not changed and equal else "DIFFERS"
        reproduced &= verdict == "reproduced"
        lines.append(
            f"{record['run']} vs {old['run']} ({name}, seed {seed}): {verdict}: "
            f"{equal} numbers equal, {len(changed)} different"
        )
        lines += [f"  {field}: {before} -> {after}" for field, before, after in changed[:20]]
    return "\n".join(lines), reproduced


def same(recorded: float, now: float) -> bool:
    """Equal at the precision the number was recorded with (older ledgers kept 4 decimals)."""
    if recorded == now or (math.isnan(recorded) and math.isnan(now)):
        return True
    text = repr(float(recorded))
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else None
    return decimals is not None and decimals < 12 and round(now, decimals) == recorded


def compare_rows(old: list[dict], new: list[dict]) -> tuple[int, list[tuple[str, object, object]]]:
    """(numbers equal, [(row.field, recorded, now)] that differ); a row count that differs is
    one difference."""
    if len(old) != len(new):
        return 0, [("rows", len(old), len(new))]
    equal, changed = 0, []
    for index, (before, after) in enumerate(zip(old, new, strict=True)):
        for field in sorted(set(before) | set(after)):
            a, b = before.get(field), after.get(field)
            if any(t in field for t in TIMING) or isinstance(a, dict | list):
                continue
            numbers = isinstance(a, int | float) and isinstance(b, int | float)
            if numbers and same(a, b):
                equal += 1
            elif a != b:
                changed.append((f"row {index}.{field}", a, b))
    return equal, changed
