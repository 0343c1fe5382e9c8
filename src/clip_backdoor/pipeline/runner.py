"""The stage runner: model -> stages -> evaluation at every point -> run folder.

Every stage, whatever its kind, is built by its kind (``stages.STAGE_KINDS``) and called as
``stage.run(ctx) -> StageOutput``; the context is read-only and the output's model state, when
it has one, is what the next stage and the evaluation see. The model is evaluated on every
evaluation set at every point the recipe names (the clean model, then after each stage that
changes it); one table gets a row per point and set, and each kind may add its own.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from clip_backdoor.analysis.resistivity import resistivity_figure
from clip_backdoor.artifacts import link_into
from clip_backdoor.core.runs import RunDir
from clip_backdoor.core.seeding import seed_everything
from clip_backdoor.evaluation import FeatureCache
from clip_backdoor.evaluation.image_quality import image_quality
from clip_backdoor.pipeline.inputs import prepare
from clip_backdoor.pipeline.methods import register_methods
from clip_backdoor.pipeline.points import Points
from clip_backdoor.pipeline.recipes import Recipe
from clip_backdoor.stages import STAGE_KINDS, ModelState, StageContext, StageOutput
from clip_backdoor.stages.rows import starting_state


@dataclass
class RunResult:
    path: Path
    metrics: dict
    table: str


def run_recipe(recipe: Recipe, progress: bool = True) -> RunResult:
    """Execute a validated recipe; inputs are checked before the run folder is made."""
    register_methods()
    seed_everything(recipe.seed)
    inputs = prepare(recipe)
    run = RunDir.create(recipe.runs_root, recipe.name)
    resolved = recipe.model_dump()
    target = inputs.state.target_name
    resolved["resolved"] = {"precision": inputs.precision, "templates": inputs.templates}
    resolved["resolved"]["target"] = target
    run.write_config(resolved)
    model = inputs.state.model
    run.log(f"model {model.name} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    for data in inputs.test_sets:
        run.log(f"data {data.name}/{data.split}: {len(data)} images")
    ctx = StageContext(
        recipe,
        run,
        inputs.tokenizer,
        inputs.test_sets,
        inputs.state,
        FeatureCache() if recipe.evaluation.cache else None,
        progress,
        inputs.validation,
    )
    if ctx.validation is not None:
        run.log(
            f"held out {len(ctx.validation)} clean images of {ctx.validation.name} as validation"
            f" data for the stages; reported numbers use the other {len(ctx.test_set)}"
        )
    with run.recording():
        if inputs.source is not None:
            link_into(inputs.source, run.path / "artifacts" / "backdoor")
        return _run_stages(ctx, inputs, Points(inputs.templates, inputs.precision))


def _run_stages(ctx: StageContext, inputs, points: Points) -> RunResult:
    recipe, run, specs = ctx.recipe, ctx.run, ctx.recipe.stages
    metrics: dict = {}
    outputs: dict[str, dict[str, StageOutput]] = {}  # kind -> label -> output
    clean = None  # the clean model, while no stage has brought a trigger
    if recipe.evaluation.clean or not specs:
        points.add(ctx, "clean" if specs else "model", "clean")
        if ctx.trigger is None and specs:
            clean = ctx.state.but(model=copy.deepcopy(ctx.model))  # stages may train in place
    row_start: ModelState | None = None  # the state alternatives in a row each start from
    for index, (spec, stage) in enumerate(zip(specs, inputs.stages, strict=True)):
        kind, label = STAGE_KINDS.get(spec.kind), spec.label or spec.method
        state, row_start = starting_state(specs, index, kind, ctx.state, row_start)
        ctx = replace(ctx, state=state, label=label)
        run.log(f"stage {spec.kind} {spec.method} {spec.params}")
        started = time.perf_counter()
        output = stage.run(ctx)
        metrics[f"{spec.kind}.{label}"] = output.metrics
        seconds = round(time.perf_counter() - started, 3)
        metrics.setdefault("stage_seconds", {})[f"{spec.kind}.{label}"] = seconds
        outputs.setdefault(spec.kind, {})[label] = output
        if output.state is not None:
            ctx = replace(ctx, state=output.state)
        check_device(ctx.model, recipe.device, f"after stage {label}")
        if clean is not None and ctx.trigger is not None:
            # the trigger exists only now: the clean model's ASR is the baseline to beat
            rows = points.evaluate(
                replace(ctx, state=ctx.state.but(model=clean.model, learner=None)), "clean", "clean"
            )
            points.rows[: len(rows)] = rows
            clean = None
        if kind.changes_model and (spec.evaluate or index == len(specs) - 1):
            points.add(ctx, label, spec.kind)
    metrics["evaluation_seconds"] = points.seconds
    metrics["points"], metrics["evaluation"] = points.rows, points.rows[-1]
    if ctx.trigger is not None and not ctx.trigger.is_identity and recipe.evaluation.quality:
        metrics["quality"] = image_quality(ctx.trigger, ctx.test_set, seed=recipe.seed)
    if points.resistivity:
        resistivity_figure(points.resistivity, run.path / "figures" / "resistivity.png")
    tables = [points.table(run, ctx)]
    for name, by_label in outputs.items():
        finish = STAGE_KINDS.get(name).finish
        tables += [finish(run, by_label)] if finish is not None else []
    run.write_metrics(metrics)
    run.log("metrics " + str(points.rows[-1]))
    return RunResult(run.path, metrics, "\n\n".join(t for t in tables if t))


def check_device(model, device: str, where: str) -> None:
    """Every parameter and buffer of the model on the run's device: a stage that leaves one
    behind would otherwise run on, slowly or half on the CPU, until a kernel refuses."""
    wanted = torch.device(device).type
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type != wanted:
            raise RuntimeError(
                f"device mismatch {where}: {name} is on {tensor.device}, the run on {device}"
            )
