"""Skip the defenses and detectors of an attack that did not implant.

On a small model several attacks of the literature leave no backdoor (ISSBA, WaNet and the
label-consistent attack measure an ASR near 0 on mini-CLIP). Every other cell of such an
attack and seed would measure a backdoor that is not there, and on two CPU cores they are most
of a grid's hours. With ``min_attack_asr`` set, an attack and seed whose ``none`` cell (the
attacked model, always run first) measured an ASR below it runs none of its other cells; the
grid says why they are empty. A cell finished before stays in the grid, and a cell whose
``none`` cell has not run yet is not judged: it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from clip_backdoor.matrix.spec import NONE, Cell


def attack_asr(folder: Path) -> float | None:
    """The attacked model's ASR (0-1) in a finished ``none`` cell folder."""
    points = json.loads((folder / "metrics.json").read_text()).get("points") or [{}]
    asr = points[-1].get("asr")
    return None if asr is None else float(asr)


def failed_attacks(cells: list[Cell], root: Path, min_asr: float | None) -> dict:
    """{(attack, seed): ASR} of the attack-seeds whose finished ``none`` cell is under
    ``min_asr`` (empty where there is no gate)."""
    if min_asr is None:
        return {}
    failed = {}
    for cell in cells:
        if cell.kind != NONE:
            continue
        folder = cell.folder(root)
        asr = attack_asr(folder) if folder else None
        if asr is not None and asr < min_asr:
            failed[(cell.attack, cell.seed)] = asr
    return failed


def skip_reason(cell: Cell, failed: dict, min_asr: float | None) -> str | None:
    """Why ``cell`` is not run ("attack ASR 0.7% < 10% under none"), or None: it runs."""
    asr = failed.get((cell.attack, cell.seed))
    if cell.kind == NONE or asr is None or min_asr is None:
        return None
    return f"attack ASR {100 * asr:.1f}% < {100 * min_asr:g}% under none"
