"""The layers contract (pyproject.toml, import-linter): no import runs up the layers, and the
check fails on one that does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_no_import_runs_up_the_layers():
    done = _lint()
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 kept, 0 broken" in done.stdout


def test_a_method_that_imports_the_runner_breaks_the_contract(tmp_path):
    """The same check on a copy of the package where an attack imports the runner."""
    copy = tmp_path / "clip_backdoor"
    shutil.copytree(ROOT / "src" / "clip_backdoor", copy, ignore=shutil.ignore_patterns("*.pyc"))
    attack = copy / "attacks" / "badencoder.py"
    attack.write_text(attack.read_text() + "\nfrom clip_backdoor.pipeline import runner  # noqa\n")
    done = _lint(tmp_path)
    assert done.returncode == 1
    assert "clip_backdoor.attacks is not allowed to import clip_backdoor.pipeline" in done.stdout
    assert "clip_backdoor.attacks.badencoder -> clip_backdoor.pipeline.runner" in done.stdout
