"""Summary tables in ``results/``, written from run folders (never typed in by hand).

Each table names the recipes and the commits that produced its rows, so anyone can re-run them.
Run folders are git-ignored and die with the machine, so every summarised run also leaves a
record (its rows and where they came from) in ``results/<table>_runs.json``: a later call adds or
replaces runs in that ledger and rewrites the table from all of it, so rows measured in earlier
sessions are kept without their folders. In a table where each run is one point (the scan zoo:
one model each), a later run of the same run name and seed (a recipe run again, e.g. after it
gained a stage) replaces the earlier one, so no model is counted twice.
``--fresh`` starts the ledger over.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from clip_backdoor.core.errors import UserError
from clip_backdoor.reports.common import Table, finished_runs, read_run


def tables() -> dict[str, Table]:
    """Every summary table, by name: one small module of ``reports`` each."""
    from clip_backdoor.reports import (
        ablation,
        bai,
        data_scan,
        decomposition,
        defenses,
        families,
        matrix,
        measuring,
        poisoning,
        scan,
    )

    modules = (
        poisoning,
        bai,
        defenses,
        ablation,
        decomposition,
        measuring,
        scan,
        data_scan,
        matrix,
        families,
    )
    return {m.TABLE.name: m.TABLE for m in modules}


TABLES = (
    "poisoning",
    "bai",
    "defenses",
    "ablation",
    "decomposition",
    "measuring",
    "scan",
    "data_scan",
    "matrix",
    "families",
)


def run_record(table: str, folder: Path) -> dict:
    """What a summary keeps of one run folder: its rows and the line naming its provenance."""
    metrics, config = read_run(folder)
    spec = tables()[table]
    rows = spec.rows(metrics, config, folder)
    versions = config.get("versions", {})
    source = (
        f"- `{folder.name}`: recipe `{config.get('recipe_file') or config.get('name')}`, "
        f"seed {config.get('seed')}, commit `{versions.get('commit', '?')}`, "
        f"{versions.get('cpu', '?')}"
    )
    precision = config.get("resolved", {}).get("precision")
    if precision:  # fp32 and bf16 runs of one recipe differ in the last digits: say which
        source += f", {precision}"
    if spec.source_note is not None:
        source += spec.source_note(metrics)
    return {"run": folder.name, "source": source, "rows": rows}


def rerun_key(record: dict) -> tuple[str, str]:
    """(run name without its timestamp, seed): the same for two runs of one recipe and seed."""
    seed = re.search(r", seed (\S+?),", record["source"])
    return re.sub(r"^\d{8}-\d{6}-", "", record["run"]), seed.group(1) if seed else "?"


def ledger_path(table: str, out: Path) -> Path:
    return out / f"{table}_runs.json"


def read_ledger(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        records = {record["run"]: record for record in json.loads(path.read_text())}
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a run ledger ({e}); remove it or pass --fresh") from None
    for record in records.values():  # ledgers older than the model column hold v1 runs only
        for row in record["rows"]:
            row.setdefault("model", "mini-clip")
    return records


def write_summary(table: str, runs: list[str], out: str | Path, fresh: bool = False) -> str:
    if table not in TABLES:
        raise UserError(f"unknown summary table '{table}' (known: {', '.join(TABLES)})")
    out = Path(out)
    ledger = {} if fresh else read_ledger(ledger_path(table, out))
    new = [run_record(table, run) for run in finished_runs(runs)]  # all read before writing
    ledger.update({record["run"]: record for record in new})
    if tables()[table].latest_run_only:
        latest = {rerun_key(record): name for name, record in sorted(ledger.items())}
        ledger = {name: ledger[name] for name in latest.values()}
    if not ledger:
        raise UserError(f"no runs to summarise: give run folders (none recorded in {out})")
    records = [ledger[name] for name in sorted(ledger)]
    rows = [row for record in records for row in record["rows"]]
    sources = [record["source"] for record in records]
    out.mkdir(parents=True, exist_ok=True)
    ledger_file = ledger_path(table, out)
    ledger_file.write_text(json.dumps(records, indent=1) + "\n")
    return tables()[table].write(rows, sources, out, ledger_file.name)
