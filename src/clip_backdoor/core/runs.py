"""Run folders: ``<root>/<YYYYmmdd-HHMMSS>-<name>/`` with config, metrics, log, tables, figures.

A run never overwrites an existing folder: a name already taken gets a ``-2``, ``-3`` suffix.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

import clip_backdoor
from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.errors import UserError


@functools.cache
def git_commit() -> str:
    """The checkout's commit, with "+dirty" when tracked files differ from it; "" outside git.

    Read once per process: a process runs the code it imported, so a matrix's later cells name
    the commit it started at, not one committed while it ran whose code it never loaded."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return commit + ("+dirty" if dirty else "")


def versions() -> dict:
    import open_clip
    import torch

    return {
        "commit": git_commit(),
        "clip_backdoor": clip_backdoor.__version__,
        "torch": str(torch.__version__),
        "open_clip": str(open_clip.__version__),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": precision_mod.cpu_name(),
        "native_bf16": precision_mod.native_bf16(),
    }


def json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class RunDir:
    """A fresh run folder with a logger that writes ``log.txt`` and the console."""

    def __init__(self, path: Path) -> None:
        self.path = path
        for sub in ("tables", "figures", "artifacts"):
            (path / sub).mkdir(exist_ok=True)
        self.logger = logging.getLogger(f"clip_backdoor.run.{path.name}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        handler = logging.FileHandler(path / "log.txt", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.logger.addHandler(handler)

    @classmethod
    def create(cls, root: str | Path, name: str) -> RunDir:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
        for attempt in range(1, 1000):
            path = root / (stem if attempt == 1 else f"{stem}-{attempt}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path)
        raise RuntimeError(f"no free run folder name under {root} for {stem}")

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run folder, to continue (resume) it; its log is appended to."""
        return cls(Path(path))

    def log(self, message: str) -> None:
        self.logger.info(message)

    def write_config(self, config: dict) -> None:
        text = yaml.safe_dump({**config, "versions": versions()}, sort_keys=False)
        (self.path / "config.yaml").write_text(text)

    def write_metrics(self, metrics: dict) -> None:
        text = json.dumps(json_safe(metrics), indent=2, allow_nan=False)
        (self.path / "metrics.json").write_text(text + "\n")

    def write_table(
        self, name: str, headers: Sequence[str], rows: Sequence[Sequence], note: str = ""
    ) -> str:
        """Writes tables/<name>.md (with the note under it) and .csv; returns the markdown."""
        return write_table(self.path / "tables", name, headers, rows, note)

    def close(self) -> None:
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)

    @contextmanager
    def recording(self) -> Iterator[RunDir]:
        """The work of a run: bad input found mid-way removes the folder (nothing half-written
        is left); a bug or an interrupt keeps it, with the failure at the end of its log."""
        try:
            yield self
        except UserError:
            self.close()
            shutil.rmtree(self.path)
            raise
        except BaseException as e:
            self.log(f"failed: {type(e).__name__}: {e}")
            raise
        finally:
            self.close()


def write_table(
    folder: Path, name: str, headers: Sequence[str], rows: Sequence[Sequence], note: str = ""
) -> str:
    """``folder``/<name>.md (with the note under it) and .csv; returns the markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    markdown = markdown_table(headers, rows) + (f"\n\n{note}" if note else "")
    (folder / f"{name}.md").write_text(markdown + "\n")
    with (folder / f"{name}.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(headers)
        writer.writerows(rows)
    return markdown


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.2f}"
    return str(value)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """A results CSV: the given columns of each row, floats with four decimals."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})


def config_model(config: dict) -> str:
    """The model a run measured: the recipe's model name (v1 ``mini-clip``, ``mini-clip-v2``);
    every results table has it as a column, so rows of two measuring models sit side by side."""
    return str(config.get("model", {}).get("name", "?"))


def provenance(table: str, ledger_name: str, sources: list[str]) -> str:
    """The closing lines of a results/ summary: the command and the runs it was written from."""
    return (
        f"Written by `clip-backdoor results {table} RUN_DIR...` from these run folders "
        f"(each recorded in `{ledger_name}`):\n\n" + "\n".join(sources) + "\n"
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
