"""The stage runner: model -> stages (attack, defense, detection) -> evaluation -> run folder.

A stage is a class registered under its kind (``ATTACKS``, ``DEFENSES``, ``DETECTORS``), built
with the recipe's ``params`` and called as ``stage.run(context) -> metrics``. It may replace the
model, set the trigger and target, and write artifacts into the run folder.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clip_backdoor import precision as precision_mod
from clip_backdoor.data import load_classification
from clip_backdoor.errors import UserError
from clip_backdoor.evaluation import FeatureCache, evaluate_zeroshot, resolve_templates
from clip_backdoor.models import PixelCLIP, load_clip
from clip_backdoor.recipes import STAGE_REGISTRY, Recipe
from clip_backdoor.registry import REGISTRIES
from clip_backdoor.runs import RunDir
from clip_backdoor.triggers import Trigger
from clip_backdoor.triggers import get as get_trigger


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunContext:
    recipe: Recipe
    run: RunDir
    model: PixelCLIP
    tokenizer: Any
    test_set: Any
    trigger: Trigger | None = None
    target: int | None = None
    cache: FeatureCache | None = None
    metrics: dict = field(default_factory=dict)


@dataclass
class RunResult:
    path: Path
    metrics: dict
    table: str


def _resolve_target(target: str | int | None, dataset) -> int | None:
    if target is None or isinstance(target, int):
        return target
    return dataset.class_index(target)


def run_recipe(recipe: Recipe, progress: bool = True) -> RunResult:
    """Execute a validated recipe; inputs are checked before the run folder is made."""
    seed_everything(recipe.seed)
    spec, ev = recipe.model, recipe.evaluation
    model, preprocess, tokenizer = load_clip(
        spec.name, spec.pretrained, arch=spec.arch, device=recipe.device
    )
    test_set = load_classification(
        recipe.data.name,
        recipe.data.split,
        preprocess,
        image_size=model.image_size,
        seed=recipe.seed,
        size=recipe.data.size,
    )
    templates = resolve_templates(ev.templates)
    trigger = get_trigger(ev.trigger.name)(**ev.trigger.params) if ev.trigger else None
    target = _resolve_target(ev.target, test_set)
    precision = precision_mod.resolve(ev.precision, recipe.device)

    run = RunDir.create(recipe.runs_root, recipe.name)
    resolved = recipe.model_dump()
    resolved["resolved"] = {"precision": precision, "templates": templates, "target": target}
    run.write_config(resolved)
    run.log(f"model {model.name} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    run.log(f"data {test_set.name}/{test_set.split}: {len(test_set)} images")
    ctx = RunContext(
        recipe,
        run,
        model,
        tokenizer,
        test_set,
        trigger,
        target,
        FeatureCache() if ev.cache else None,
    )
    try:
        for stage_spec in recipe.stages:
            stage = REGISTRIES[STAGE_REGISTRY[stage_spec.kind]].get(stage_spec.method)
            run.log(f"stage {stage_spec.kind} {stage_spec.method} {stage_spec.params}")
            ctx.metrics[f"{stage_spec.kind}.{stage_spec.method}"] = stage(**stage_spec.params).run(
                ctx
            )
        metrics = evaluate_zeroshot(
            ctx.model,
            ctx.tokenizer,
            ctx.test_set,
            templates=templates,
            trigger=ctx.trigger,
            target=ctx.target,
            topk=ev.topk,
            batch_size=ev.batch_size,
            precision=precision,
            cache=ctx.cache,
            progress=progress,
        )
        ctx.metrics["evaluation"] = metrics
        table = _evaluation_table(run, recipe, ctx, metrics, precision, len(templates))
        run.write_metrics(ctx.metrics)
        run.log("metrics " + str(metrics))
    except UserError:
        run.close()
        shutil.rmtree(run.path)  # bad input found mid-run: leave nothing half-written
        raise
    except BaseException as e:
        run.log(f"failed: {type(e).__name__}: {e}")  # a bug or an interrupt: keep the log
        raise
    finally:
        run.close()
    return RunResult(run.path, ctx.metrics, table)


def _evaluation_table(
    run: RunDir, recipe: Recipe, ctx: RunContext, metrics: dict, precision: str, n_templates: int
) -> str:
    headers = ["model", "data", "split", "classes", "images", "CA %"]
    row: list = [
        ctx.model.name,
        ctx.test_set.name,
        ctx.test_set.split,
        len(ctx.test_set.classnames),
        metrics["n"],
        100 * metrics["ca"],
    ]
    for k in recipe.evaluation.topk:
        if k != 1:
            headers.append(f"top-{k} %")
            row.append(100 * metrics[f"top{k}"])
    if "asr" in metrics:
        headers += ["ASR %", "asr_all %"]
        row += [100 * metrics["asr"], 100 * metrics["asr_all"]]
    note = (
        f"Zero-shot, {n_templates} template(s), seed {recipe.seed}, {precision}. "
        "ASR: triggered test images whose true class is not the target, predicted as the target; "
        "asr_all: the same over all test images."
    )
    return run.write_table("zeroshot", headers, [row], note)
