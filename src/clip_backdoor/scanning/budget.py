"""How much a scan spends: ``--budget fast|default|thorough``.

A budget is a set of settings per scanner; settings given by name (``--param`` or a recipe's
``params``) override it. Every scanner reports the images it passed forward and backward in its
evidence (``image_passes``); ``results/scan_cost.csv`` records what each budget spends.

- ``fast``: ``all`` is patch_search and blend_search only; the coarse patch grid (stride one
  patch), two suspects and six controls (a higher threshold at the same false-alarm rate),
  shorter rounds: meant to finish a ViT-B/32 at 224 px on a laptop's CPU in minutes.
- ``default``: each scanner's own defaults.
- ``thorough``: two images per position and step, longer rounds, sixteen controls (a lower
  threshold at the same false-alarm rate); blend_search: eight sweep starts, 32 controls (its
  steps stay few: a longer search reaches any class).
"""

from __future__ import annotations

from clip_backdoor.core.errors import ConfigError

BUDGETS: dict[str, dict[str, dict]] = {
    "fast": {
        "patch_search": {
            "stride": 1.0,
            "sweep_steps": 3,
            "sweep_images": 8,
            "rounds": [2, 2, 2, 4],
            "candidates": 2,
            "controls": 6,
            "eval_images": 32,
        },
        # ViT-B/32 at 224 px on 2 cores: 8 controls and 16 blend steps took 9.7 + ~5 min
        "blend_search": {
            "steps": 10,
            "batch": 8,
            "sweep_batch": 2,
            "sweep_images": 8,
            "controls": 6,
            "eval_images": 32,
        },
    },
    "default": {},
    "thorough": {
        "patch_search": {
            "images_per_position": 2,
            "sweep_steps": 10,
            "rounds": [8, 8, 8, 16, 16, 16],
            "candidates": 3,
            "controls": 16,
            "eval_images": 128,
        },
        "blend_search": {"starts": 8, "controls": 32, "eval_images": 128},
    },
}
# What ``all`` runs under each budget (None: every scanner that is not opt-in). ``fast`` leaves
# out the per-pixel mask searches (DECREE, Neural Cleanse), hours on a full-size model on a CPU.
ALL_UNDER: dict[str, list[str] | None] = {
    "fast": ["patch_search", "blend_search"],
    "default": None,
    "thorough": ["decree", "target_search", "patch_search", "blend_search"],
}
DEFAULT_BUDGET = "default"


def check_budget(budget: str) -> None:
    if budget not in BUDGETS:
        raise ConfigError(f"unknown scan budget '{budget}' (choose {', '.join(BUDGETS)})")


def budget_params(budget: str, chosen: list[str], given: dict | None = None) -> dict:
    """Each chosen scanner's settings under ``budget``, with the ``given`` ones on top."""
    check_budget(budget)
    given = given or {}
    out = {}
    for name in chosen:
        params = {**BUDGETS[budget].get(name, {}), **given.get(name, {})}
        if params:
            out[name] = params
    return out
