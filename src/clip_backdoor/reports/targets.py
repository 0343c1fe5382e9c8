"""The bars a results table holds its rows to, read from a data file beside the recipes.

What counts as enough (ASR >= 80% for a poisoning, AUROC >= 0.9 for a detector, ...) belongs to
the experiments, not to the library: ``recipes/targets.yaml`` (or the file that
``CLIP_BACKDOOR_TARGETS`` names) says it, one section per table, each bar with where it comes
from. Without the file a table still lists its numbers and checks nothing ("-").
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from clip_backdoor.core.errors import ConfigError

TARGETS_ENV = "CLIP_BACKDOOR_TARGETS"
DEFAULT = Path("recipes") / "targets.yaml"


def targets_file() -> Path:
    return Path(os.environ.get(TARGETS_ENV) or DEFAULT)


def targets(table: str) -> dict:
    """The bars of one table (an empty mapping where the file or its section is missing)."""
    path = targets_file()
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    section = data.get(table, {}) if isinstance(data, dict) else {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: '{table}' must map bar names to values")
    return section
