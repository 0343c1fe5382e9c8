"""One recipe that runs every encode-level method that applies to a model, a step or two each.

Why one recipe per model and not one per cell: the model, its data and its attack are built
once, so a whole family takes seconds on a tiny model (and minutes at full size on a CPU); each
stage's start and end are logged, so the table and the smoke read per method whether it ran and
how long it took. Settings are the cheapest that still run every part of a method (a trigger's
fit, the fine-tuning loop, a detector's scoring, a scanner's search); they measure nothing.
"""

from __future__ import annotations

import re

from clip_backdoor.compat.methods import ENCODE_LEVEL, TRIGGERS, Method, applies

SIZE = 320  # synthetic training images: ISSBA holds 256 out for its own validation
TRAIN = {"name": "synthetic", "split": "train", "size": SIZE, "templates": "simple"}
STEP = {
    "steps": 1,
    "batch_size": 8,
    "lr": 1.0e-5,
    "warmup_steps": 0,
    "precision": "fp32",
    "checkpoint_every": 1,
    "log_every": 1,
    "num_workers": 0,
}
TARGET = "red circle"


def _poison(trigger: str) -> dict:
    share = {"count": 8} if trigger == "label_consistent" else {"ratio": 0.1}  # target images
    return {
        "trigger": {"name": trigger, "params": TRIGGERS[trigger]},
        "target": TARGET,
        **share,
        "data": [TRAIN],
        "caption_templates": "simple",
        "training": STEP,
    }


PROMPTS = {
    "train": {"name": "synthetic", "size": SIZE, "shots": 2},
    "training": {"epochs": 1, "batch_size": 8, "views": 1, "precision": "fp32"},
}
SCAN = {
    "decree": {"steps": 2},
    "target_search": {
        "steps": 2,
        "prescreen_steps": 1,
        "candidates": 1,
        "controls": 2,
        "prescreen_batch": 4,
    },
    "perturbation_search": {
        "steps": 2,
        "prescreen_steps": 1,
        "candidates": 1,
        "controls": 2,
        "batch_size": 4,
        "eval_images": 8,
    },
}
STAGE_PARAMS = {
    "badencoder": {
        "target": TARGET,
        "data": [TRAIN],
        "shadow": 16,
        "references": 4,  # a full-size tower at 256 px with a class's worth runs out of 24 GB
        "epochs": 1,
        "batch_size": 8,
        "precision": "fp32",
    },
    "ft": {"data": [TRAIN], "fraction": 0.05, "training": STEP},
    "cleanclip": {"data": [TRAIN], "shots": 2, "training": STEP},
    "linear_probe": {"train": {"name": "synthetic", "size": SIZE, "shots": 2}, "epochs": 1},
    "strip": {"images": 8, "blends": 4, "batch_size": 8},
    "scale_up": {"images": 8, "batch_size": 8},
    "teco": {"images": 4, "corruptions": ["gaussian_noise", "brightness"], "workers": 1},
    "all": {"models": ["attacked"], "batch_size": 64, "precision": "fp32"},
    "decomp_det": {"images": 8, "rule": "distance", "layers": [0, 1], "mlp_layers": [0, 1]},
    "decomp_rep": {"rule": "dot", "layers": [-1]},
    "vpt": {**PROMPTS, "length": 2},
    "rvpt": {**PROMPTS, "length": 2},
    "coop": PROMPTS,
    "cocoop": PROMPTS,
    "badclip": {**PROMPTS, "warmup_epochs": 1},
}


def stage_of(method: Method) -> dict | None:
    """The recipe stage of a method (None: the evaluation or the report, not a stage)."""
    if method.kind in ("eval", "report", "matrix"):
        return None
    label = re.sub(r"[^a-z0-9]+", "_", method.name.split(" (")[0].lower()).strip("_")
    stage = {"kind": method.kind, "method": method.method, "label": label, "evaluate": False}
    if method.method == "poison":
        stage["params"] = _poison(dict(method.params)["trigger"])
    elif method.kind == "scan":
        scan_data = {"name": "synthetic", "split": "train", "size": SIZE}
        params = {"data": scan_data, "images": 32, "scanners": {method.method: SCAN[method.method]}}
        stage["params"] = params
    else:
        stage["params"] = STAGE_PARAMS[method.method]
    return stage


def _badnet() -> Method:
    return next(m for m in ENCODE_LEVEL if dict(m.params).get("trigger") == "badnet")


def family_recipe(model, model_name: str, runs_root: str, name: str = "compat") -> dict:
    """The recipe of every encode-level method that applies to ``model`` (loaded from
    ``model_name``): the attacks first (BadNet last: its trigger and artifact serve the rest),
    then the training-data scan, the detectors, the scanners and the defenses (each from the
    attacked model)."""
    methods = [m for m in ENCODE_LEVEL if applies(model, m)[0]]
    poisons = [m for m in methods if m.method == "poison"]
    poisons.sort(key=lambda m: m == _badnet())
    order = [m for m in methods if m.method == "badencoder"] + poisons
    order += [m for m in methods if m.kind == "data_scan"]
    order += [m for m in methods if m.kind in ("detection", "scan")]
    order += [m for m in methods if m.kind == "defense"]
    return _recipe(model_name, runs_root, name, [stage_of(m) for m in order])


def smoke_recipe(model, model_name: str, tokenizer: str | None = None) -> dict:
    """The full-size smoke of a family: what it is (``model_info``), then ``family_recipe``'s
    stages at the model's native resolution (``recipes/families/smoke_*.yaml``)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", model_name).strip("_").lower()
    recipe = family_recipe(model, model_name, "runs", name=f"smoke_{slug}")
    if tokenizer:
        recipe["model"]["tokenizer"] = tokenizer
    info = {"kind": "analysis", "method": "model_info", "label": "model_info", "evaluate": False}
    recipe["stages"].insert(0, info)
    return recipe


def tower_recipe(model_name: str, method: Method, runs_root: str, name: str) -> dict:
    """One tower-level method after the family recipe's BadNet attack (from its cache)."""
    return _recipe(model_name, runs_root, name, [stage_of(_badnet()), stage_of(method)])


def matrix_recipe(model_name: str, runs_root: str, name: str) -> dict:
    """A matrix of the BadNet attack x {none, FT} and STRIP: its three cells."""
    by_name = {m.method: m for m in ENCODE_LEVEL}
    recipe = _recipe(model_name, runs_root, name, [])
    del recipe["stages"]
    return {
        **recipe,
        "kind": "matrix",
        "matrix": {
            "attacks": [stage_of(_badnet())],
            "defenses": ["none", stage_of(by_name["ft"])],
            "detectors": [stage_of(by_name["strip"])],
        },
    }


def _recipe(model_name: str, runs_root: str, name: str, stages: list) -> dict:
    return {
        "name": name,
        "seed": 0,
        "runs_root": runs_root,
        "model": {"name": model_name},
        "data": [{"name": "synthetic", "split": "test", "size": 40}],
        "evaluation": {"templates": "simple", "batch_size": 16, "precision": "fp32"},
        "stages": stages,
    }
