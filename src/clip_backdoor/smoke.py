"""``clip-backdoor run RECIPE --smoke``: a paper's recipe shortened to a smoke of the same path.

Why: a recipe at a paper's own settings (``recipes/papers/``) needs a GPU, the pretrained
weights and hours; before spending them, a user (and ``make gpu-check``) runs the same stages on
the same architecture, untrained, for a few steps on a few images. What "a few" means is the
recipe's own ``smoke:`` section, written next to the settings it shortens, so the smoke is read
off the recipe, not guessed: its keys replace the recipe's (mappings key by key), and
``smoke.stages`` maps a stage label to the params that replace its own. Always: the weights are
left untrained (``pretrained`` dropped: nothing to download), the run is named ``<name>_smoke``,
and a CUDA device falls back to the CPU where there is none.
"""

from __future__ import annotations

import copy
from typing import Any

from clip_backdoor.errors import ConfigError


def merged(base: Any, override: Any) -> Any:
    """``override`` over ``base``: mappings key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merged(base.get(key), value)
        return out
    return copy.deepcopy(override)


def smoke_version(data: dict, source: str, cuda: bool) -> dict:
    """The recipe's smoke (see the module docstring); one line when it has no ``smoke:``."""
    smoke = data.get("smoke") if isinstance(data, dict) else None
    if not smoke:
        raise ConfigError(
            f"{source}: no 'smoke' section, so nothing says how to shorten its stages "
            "(the recipes under recipes/papers/ have one; --smoke applies to those)"
        )
    if not isinstance(smoke, dict):
        raise ConfigError(f"{source}: smoke: a mapping of the keys to replace")
    from clip_backdoor.recipes import included_stage

    out = {k: copy.deepcopy(v) for k, v in data.items() if k != "smoke"}
    out["stages"] = [included_stage(s, source) for s in out.get("stages", [])]
    stages = smoke.get("stages", {})
    labels = [s.get("label") or s.get("method") for s in out.get("stages", [])]
    unknown = sorted(set(stages) - set(labels))
    if unknown:
        raise ConfigError(
            f"{source}: smoke.stages: no stage labelled '{unknown[0]}' (stages: "
            f"{', '.join(str(label) for label in labels)})"
        )
    for key, value in smoke.items():
        if key != "stages":
            out[key] = merged(out.get(key), value)
    for stage, label in zip(out.get("stages", []), labels, strict=True):
        if label in stages:
            stage["params"] = merged(stage.get("params", {}), stages[label])
    out["name"] = f"{out['name']}_smoke"
    model = dict(out.get("model") or {})
    model.pop("pretrained", None)  # the same architecture, untrained
    out["model"] = model
    if str(out.get("device", "cpu")).startswith("cuda") and not cuda:
        out["device"] = "cpu"
    return out
