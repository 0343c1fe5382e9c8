"""The documentation site builds strict (every page in the nav, every link and anchor found),
and the README stays a front page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [str(MKDOCS), "build", "--strict", "-f", str(root / "mkdocs.yml"), "-d", str(site)]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)


def test_the_site_builds_strict(tmp_path):
    done = _build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "methods" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    page = tmp_path / "docs" / "cli.md"
    page.write_text(page.read_text() + "\nSee [the gone page](gone.md).\n")
    done = _build(tmp_path, tmp_path / "site")
    assert done.returncode != 0 and "gone.md" in done.stderr


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10_500  # what it is, the two commands, a tour, the methods
    commands = [line.split()[0:2] for line in readme.splitlines()[3:10] if line.startswith("make")]
    assert commands[:2] == [["make", "demo"], ["make", "test"]]  # the two commands open it
