"""The JSON description file of a saved folder (prompt learner, visual prompts), read with
one-line errors: a missing file says the folder is not of that kind, bad JSON says where."""

from __future__ import annotations

import json
from pathlib import Path

from clip_backdoor.core.errors import ModelLoadError


def read_info(folder: str | Path, filename: str, kind: str) -> dict:
    path = Path(folder) / filename
    if not path.is_file():
        raise ModelLoadError(f"{folder} is not a {kind} folder (no {filename})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e})") from None
