"""The stage runner: model -> stages (attack, defense, detection) -> evaluation -> run folder.

A stage is a class registered under its kind (``ATTACKS``, ``DEFENSES``, ``DETECTORS``), built
with the recipe's ``params`` and called as ``stage.run(context) -> metrics``. It may replace the
model, set the trigger and target, and write artifacts into the run folder. The model is
evaluated at every point the recipe names (the clean model, then after each stage) on every
evaluation set, and one table gets a row per point and set.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from clip_backdoor.analysis.resistivity import MAIN, perturbation_resistivity, resistivity_figure
from clip_backdoor.artifacts import cache_key, is_artifact, link_into, load_backdoor
from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.errors import ConfigError, DatasetError
from clip_backdoor.core.registry import REGISTRIES
from clip_backdoor.core.runs import RunDir
from clip_backdoor.core.seeding import seed_everything
from clip_backdoor.data import load_classification
from clip_backdoor.data.domain_shift import domain_shift
from clip_backdoor.data.fewshot import TargetFirst, class_part, holdout_split
from clip_backdoor.evaluation import FeatureCache, evaluate_zeroshot, resolve_templates
from clip_backdoor.evaluation.detection import roc_figure
from clip_backdoor.evaluation.features import model_fingerprint
from clip_backdoor.evaluation.image_quality import image_quality
from clip_backdoor.evaluation.metrics import ASR_NOTE
from clip_backdoor.evaluation.zeroshot import text_classifier
from clip_backdoor.models import PixelCLIP, load_clip, load_model_spec
from clip_backdoor.pipeline.methods import register_methods
from clip_backdoor.pipeline.recipes import STAGE_REGISTRY, Recipe
from clip_backdoor.prompts import is_prompt_folder, load_prompts, prompt_info
from clip_backdoor.triggers import Trigger
from clip_backdoor.triggers import get as get_trigger


@dataclass
class RunContext:
    recipe: Recipe
    run: RunDir
    model: PixelCLIP
    tokenizer: Any
    test_sets: list
    trigger: Trigger | None = None
    target_name: str | None = None
    cache: FeatureCache | None = None
    metrics: dict = field(default_factory=dict)
    progress: bool = True
    learner: Any = None  # a prompt learner classifies instead of the zero-shot templates
    target_first: bool = False  # insert the target name at index 0 where a set lacks it
    resistivity: dict = field(default_factory=dict)  # point -> PR results (for the figure)
    validation: Any = None  # clean images held out of the first set for the stages
    detections: dict = field(default_factory=dict)  # detector label -> scores (for the ROC)
    stage_label: str | None = None  # the running stage's label (names its files)

    @property
    def test_set(self):
        return self.test_sets[0]

    @property
    def target(self) -> int | None:
        """The target's label in the first evaluation set."""
        return target_index(self.target_name, self.test_set)

    def log(self, message: str) -> None:
        self.run.log(message)

    def require_target(self, name: str) -> None:
        """A target must be a class of at least one evaluation set, or ASR means nothing."""
        _check_target(name, self.test_sets)

    def adopt_artifact(self, folder: Path, reused: bool) -> dict:
        """Make a backdoor artifact the current model, trigger and target; link it in."""
        backdoor = load_backdoor(folder, device=self.recipe.device)
        self.model, self.trigger, self.target_name = (
            backdoor.model,
            backdoor.trigger,
            backdoor.target,
        )
        link_into(folder, self.run.path / "artifacts" / "backdoor")
        backdoor.trigger.render(self.run.path / "figures" / f"trigger_{backdoor.trigger.name}.png")
        info = {k: v for k, v in backdoor.info.items() if k != "config"}
        return {**info, "artifact": str(folder), "reused": reused}


@dataclass
class RunResult:
    path: Path
    metrics: dict
    table: str


def target_index(name: str | int | None, dataset) -> int | None:
    """The label of a target name in a data set, or None when the set lacks it."""
    if name is None:
        return None
    if isinstance(name, int):
        return name
    try:
        return dataset.class_index(name)
    except DatasetError:
        return None


def _load_model(recipe: Recipe):
    """(model, tokenizer, trigger, target, learner) of the recipe's model, with its visual
    prompts applied if it names a folder of them."""
    model, tokenizer, trigger, target, learner = _load_base_model(recipe)
    if recipe.model.visual_prompts:
        from clip_backdoor.models.visual_prompts import load_visual_prompts

        model = load_visual_prompts(recipe.model.visual_prompts, model)
    return model, tokenizer, trigger, target, learner


def _load_base_model(recipe: Recipe):
    """Backdoor artifacts bring their trigger and target; a prompt-learner folder loads the CLIP
    it names under it."""
    spec = recipe.model
    if is_prompt_folder(spec.name):
        from clip_backdoor.attacks.badclip import load_prompt_backdoor

        info = prompt_info(spec.name)
        model, _, tokenizer = load_clip(info["model"], info.get("pretrained"), device=recipe.device)
        if not is_artifact(spec.name):
            return model, tokenizer, None, None, load_prompts(spec.name, model, tokenizer)
        learner, trigger, backdoor = load_prompt_backdoor(spec.name, model, tokenizer)
        return model, tokenizer, trigger, backdoor["target"], learner
    if is_artifact(spec.name):
        backdoor = load_backdoor(spec.name, device=recipe.device)
        return backdoor.model, backdoor.tokenizer, backdoor.trigger, backdoor.target, None
    model, _, tokenizer = load_model_spec(spec, recipe.device)
    return model, tokenizer, None, None, None


def run_recipe(recipe: Recipe, progress: bool = True) -> RunResult:
    """Execute a validated recipe; inputs are checked before the run folder is made."""
    register_methods()
    seed_everything(recipe.seed)
    ev = recipe.evaluation
    model, tokenizer, trigger, target, learner = _load_model(recipe)
    test_sets = [
        domain_shift(
            class_part(
                load_classification(
                    d.name,
                    d.split,
                    model.pixel_transform(),
                    image_size=model.image_size,
                    seed=recipe.seed,
                    size=d.size,
                ),
                d.classes,
            ),
            d.shift,
        )
        for d in recipe.data
    ]
    templates = resolve_templates(ev.templates)
    if ev.trigger:
        trigger = get_trigger(ev.trigger.name)(**ev.trigger.params)
    if ev.target is not None:
        target = ev.target
    if isinstance(target, int):
        target = (
            test_sets[0].classnames[target]
            if 0 <= target < len(test_sets[0].classnames)
            else target
        )
    stages = [build_stage(s) for s in recipe.stages]  # validates params before anything runs
    validation, test_sets[0] = _hold_out(recipe, stages, test_sets[0])
    for stage in stages:
        name = getattr(getattr(stage, "spec", None), "target", None)
        if name is not None:
            _check_target(name.replace("_", " "), test_sets)
    if target is not None and trigger is not None and learner is None:
        _check_target(target, test_sets)  # a prompt backdoor inserts its target where absent
    precision = precision_mod.resolve(ev.precision, recipe.device)

    run = RunDir.create(recipe.runs_root, recipe.name)
    resolved = recipe.model_dump()
    resolved["resolved"] = {"precision": precision, "templates": templates, "target": target}
    run.write_config(resolved)
    run.log(f"model {model.name} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    for data in test_sets:
        run.log(f"data {data.name}/{data.split}: {len(data)} images")
    ctx = RunContext(
        recipe,
        run,
        model,
        tokenizer,
        test_sets,
        trigger,
        target,
        FeatureCache() if ev.cache else None,
        progress=progress,
        learner=learner,
        target_first=(learner is not None and trigger is not None) or ev.add_target,
        validation=validation,
    )
    if validation is not None:
        run.log(
            f"held out {len(validation)} clean images of {validation.name} as validation data "
            f"for the stages; reported numbers use the other {len(test_sets[0])}"
        )
    points: list[dict] = []
    with run.recording():
        if is_artifact(recipe.model.name) or is_prompt_folder(recipe.model.name):
            link_into(Path(recipe.model.name), run.path / "artifacts" / "backdoor")
        clean_model = None
        if ev.clean or not recipe.stages:
            points += _evaluate_point(
                ctx, "clean" if recipe.stages else "model", "clean", templates, precision
            )
            if ctx.trigger is None and recipe.stages:
                clean_model = copy.deepcopy(ctx.model)  # stages may train the model in place
        undefended = None  # (model, learner) the defenses in a row each start from
        for index, (spec, stage) in enumerate(zip(recipe.stages, stages, strict=True)):
            label = spec.label or spec.method
            restarts = _restarts_after(recipe.stages, index)
            if spec.kind != "defense":
                undefended = None
            elif undefended is None:
                # FT trains in place: keep a copy only if a later defense must start from it
                undefended = (copy.deepcopy(ctx.model) if restarts else None, ctx.learner)
            elif not spec.stack:
                model = undefended[0]
                ctx.model = copy.deepcopy(model) if restarts else model
                ctx.learner = undefended[1]
            run.log(f"stage {spec.kind} {spec.method} {spec.params}")
            ctx.stage_label = label
            started = time.perf_counter()
            ctx.metrics[f"{spec.kind}.{label}"] = stage.run(ctx)
            seconds = round(time.perf_counter() - started, 3)
            ctx.metrics.setdefault("stage_seconds", {})[f"{spec.kind}.{label}"] = seconds
            check_device(ctx.model, recipe.device, f"after stage {label}")
            if clean_model is not None and ctx.trigger is not None:
                # the trigger exists only now: the clean model's ASR is the baseline to beat
                rows = _evaluate_point(
                    replace(ctx, model=clean_model, learner=None),
                    "clean",
                    "clean",
                    templates,
                    precision,
                )
                points[: len(rows)] = rows
                clean_model = None
            unchanged = spec.kind in ("analysis", "scan", "data_scan")  # the model stays as it was
            if not unchanged and (spec.evaluate or spec is recipe.stages[-1]):
                points += _evaluate_point(ctx, label, spec.kind, templates, precision)
        ctx.metrics["points"] = points
        ctx.metrics["evaluation"] = points[-1]
        if ctx.trigger is not None and not ctx.trigger.is_identity and ev.quality:
            ctx.metrics["quality"] = image_quality(ctx.trigger, ctx.test_set, seed=recipe.seed)
        if ctx.resistivity:
            resistivity_figure(ctx.resistivity, run.path / "figures" / "resistivity.png")
        table = _table(run, recipe, ctx, points, precision, len(templates))
        if ctx.detections:
            roc_figure(ctx.detections, run.path / "figures" / "roc.png")
            table += "\n\n" + _detection_table(run, ctx)
        run.write_metrics(ctx.metrics)
        run.log("metrics " + str(points[-1]))
    return RunResult(run.path, ctx.metrics, table)


def check_device(model, device: str, where: str) -> None:
    """Every parameter and buffer of the model on the run's device: a stage that leaves one
    behind would otherwise run on, slowly or half on the CPU, until a kernel refuses."""
    wanted = torch.device(device).type
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type != wanted:
            raise RuntimeError(
                f"device mismatch {where}: {name} is on {tensor.device}, the run on {device}"
            )


def build_stage(spec):
    """The stage object of a recipe stage; prompt stages train a registered prompt learner."""
    if spec.kind == "prompt":
        from clip_backdoor.prompts.stage import PromptStage

        return PromptStage(spec.method, **spec.params)
    if spec.kind == "data_scan":
        from clip_backdoor.data_scan.stage import DataScanStage

        return DataScanStage(spec.method, **spec.params)
    if spec.kind == "scan":
        from clip_backdoor.scanning.stage import ScanStage

        return ScanStage(spec.method, **spec.params)
    return REGISTRIES[STAGE_REGISTRY[spec.kind]].get(spec.method)(**spec.params)


def _hold_out(recipe: Recipe, stages: list, data):
    """(validation part or None, the part every number is reported on) of the first set."""
    needs = [s.method for s, stage in zip(recipe.stages, stages, strict=True) if _needs(stage)]
    fraction = recipe.evaluation.validation
    if fraction is None:
        fraction = 0.2 if needs else 0.0
    if not fraction:
        if needs:
            raise ConfigError(
                f"stage {needs[0]} needs clean validation images: set evaluation.validation > 0"
            )
        return None, data
    return holdout_split(data, fraction, recipe.seed)


def _needs(stage) -> bool:
    return bool(getattr(stage, "needs_validation", False))


def _check_target(name: str, test_sets) -> None:
    if len(test_sets) == 1 and isinstance(name, str):
        test_sets[0].class_index(name)  # its own error names the set and suggests close names
    if all(target_index(name, data) is None for data in test_sets):
        sets = ", ".join(d.name for d in test_sets)
        raise DatasetError(f"target class '{name}' is not a class of the evaluation data ({sets})")


def _restarts_after(specs: list, index: int) -> bool:
    """Whether a defense after ``specs[index]``, in the same row of defenses, starts over from
    the model before the row (so that model must be kept intact)."""
    for later in specs[index + 1 :]:
        if later.kind != "defense":
            return False
        if not later.stack:
            return True
    return False


def _evaluate_point(ctx, *args, **kwargs) -> list[dict]:
    """``_evaluate_point_rows``, timed into ``metrics['evaluation_seconds']`` per point."""
    started = time.perf_counter()
    rows = _evaluate_point_rows(ctx, *args, **kwargs)
    seconds = ctx.metrics.setdefault("evaluation_seconds", {})
    label = args[0] if args else kwargs.get("label")
    seconds[label] = round(seconds.get(label, 0.0) + time.perf_counter() - started, 3)
    return rows


def _evaluate_point_rows(
    ctx: RunContext, point: str, kind: str, templates, precision: str
) -> list[dict]:
    """CA (and ASR where the set has the target) of the current model on every set."""
    ev, rows = ctx.recipe.evaluation, []
    for data in ctx.test_sets:
        named = ctx.target_first and ctx.target_name is not None
        if named and target_index(ctx.target_name, data) is None:
            data = TargetFirst(data, ctx.target_name)
        target = target_index(ctx.target_name, data) if ctx.trigger is not None else None
        trigger = ctx.trigger if target is not None else None
        options = dict(
            templates=templates,
            topk=ev.topk,
            batch_size=ev.batch_size,
            precision=precision,
            cache=ctx.cache,
            progress=ctx.progress,
        )
        if ctx.learner is not None:
            options["classifier"] = ctx.learner.classifier(data.classnames)
        metrics = evaluate_zeroshot(
            ctx.model, ctx.tokenizer, data, trigger=trigger, target=target, **options
        )
        key = getattr(trigger, "text_key", None)
        if key and ctx.learner is not None:  # a learned head (linear probe, prompt learner)
            metrics["text_key"] = "not applicable: the head is learned, no prompt to key"
        elif key:  # dual key: ASR with the text key on every prompt; image key alone beside it
            keyed = text_classifier(
                ctx.model, ctx.tokenizer, data.classnames, [f"{key} {t}" for t in templates]
            )
            both = evaluate_zeroshot(
                ctx.model,
                ctx.tokenizer,
                data,
                trigger=trigger,
                target=target,
                classifier=keyed,
                **options,
            )
            metrics["asr_image_key_only"] = metrics["asr"]
            metrics.update(asr=both["asr"], asr_all=both["asr_all"])
        row = {"point": point, "kind": kind, "data": data.name, "split": data.split, **metrics}
        row["model"] = ctx.model.name
        row["weights"] = model_fingerprint(ctx.model)[:12]  # stages change weights, not names
        row["classes"] = len(data.classnames)
        if ev.resistivity and not rows:  # the first set only: PR is a property of the model
            row.update(_resistivity(ctx, point, data, options.get("classifier"), templates))
        ctx.log(f"evaluation {point} on {data.name}: {metrics}")
        rows.append(row)
    return rows


def _resistivity(ctx: RunContext, point: str, data, classifier, templates) -> dict:
    ev = ctx.recipe.evaluation
    if classifier is None:
        classifier = text_classifier(
            ctx.model, ctx.tokenizer, data.classnames, templates, precision=ev.precision
        )
    extra = {}
    if ctx.trigger is not None and not ctx.trigger.is_identity:
        extra["trigger"] = lambda images, generator: ctx.trigger.apply(images)
    key = _resistivity_key(ctx, data, classifier)
    result = _cached_resistivity(ctx.cache, key)
    if result is None:
        result = perturbation_resistivity(
            ctx.model,
            data,
            classifier,
            ev.resistivity,
            ctx.recipe.seed,
            extra,
            precision=ev.precision,
        )
        if ctx.cache is not None and key is not None:
            ctx.cache.put(key, _resistivity_tensors(result))
    ctx.resistivity[point] = result
    return {"pr": result[MAIN]["pr"], "pr_all": {k: v["pr"] for k, v in result.items()}}


def _resistivity_key(ctx: RunContext, data, classifier) -> str | None:
    """PR's feature-cache key: what it measures depends on the model, the images, the class
    text rows, the trigger and the draw; None for a prompt learner's classifier (no weights to
    name), which is measured every time. Why cache it: a resumed or extended recipe evaluates
    its cached points again, and PR on 1,000 images costs a minute a point where the cached
    features make CA and ASR instant."""
    if not isinstance(classifier, torch.Tensor):
        return None
    import hashlib

    ev = ctx.recipe.evaluation
    trigger = ctx.trigger.fingerprint() if ctx.trigger is not None else "clean"
    rows = hashlib.sha1(classifier.detach().float().cpu().numpy().tobytes()).hexdigest()
    return cache_key(
        "resistivity",
        model_fingerprint(ctx.model),
        data.fingerprint(),
        repr(getattr(data, "transform", None)),
        rows,
        trigger,
        ev.resistivity,
        ctx.recipe.seed,
        ev.precision,
    )


def _resistivity_tensors(result: dict) -> dict[str, torch.Tensor]:
    """Float64, so a cached PR is the very number computed; names keep their order."""
    tensors = {}
    for index, (name, r) in enumerate(result.items()):
        stats = [r["pr"], r["cos_feature"], r["cos_logit"]]
        tensors[f"{index:03d}:{name}/stats"] = torch.tensor(stats, dtype=torch.float64)
        tensors[f"{index:03d}:{name}/per_image"] = torch.tensor(r["per_image"], dtype=torch.float64)
    return tensors


def _cached_resistivity(cache: FeatureCache | None, key: str | None) -> dict | None:
    tensors = cache.get(key) if cache is not None and key is not None else None
    if tensors is None:
        return None
    result = {}
    for entry in sorted({k.rsplit("/", 1)[0] for k in tensors}):
        pr, cos_feature, cos_logit = tensors[f"{entry}/stats"].tolist()
        per_image = tensors[f"{entry}/per_image"].tolist()
        result[entry.split(":", 1)[1]] = dict(
            pr=pr, cos_feature=cos_feature, cos_logit=cos_logit, per_image=per_image
        )
    return result


def _table(run: RunDir, recipe: Recipe, ctx: RunContext, points, precision, n_templates) -> str:
    headers = ["point", "model", "weights", "data", "split", "classes", "images", "CA %"]
    extra_k = [k for k in recipe.evaluation.topk if k != 1]
    headers += [f"top-{k} %" for k in extra_k]
    has_asr = any("asr" in p for p in points)
    if has_asr:
        headers += ["ASR %", "asr_all %"]
    rows = []
    for p in points:
        row: list = [
            p["point"],
            p["model"],
            p["weights"],
            p["data"],
            p["split"],
            p["classes"],
            p["n"],
            100 * p["ca"],
        ]
        row += [100 * p[f"top{k}"] for k in extra_k]
        if has_asr:
            row += [100 * p["asr"], 100 * p["asr_all"]] if "asr" in p else [math.nan, math.nan]
        rows.append(row)
    trigger = ctx.trigger
    target = f", target '{ctx.target_name}'" if ctx.target_name is not None else ""
    what = (
        f"trigger {trigger.name}{target}. "
        if trigger is not None and not trigger.is_identity
        else ""
    )
    key = getattr(trigger, "text_key", None)
    dual = (
        f" ASR uses the text key '{key}' on every class prompt (CA: plain prompts)." if key else ""
    )
    held = (
        f" {len(ctx.validation)} clean images of {ctx.validation.name} were held out as the"
        " stages' validation data and are not in these numbers."
        if ctx.validation is not None
        else ""
    )
    note = (
        f"Zero-shot, {n_templates} template(s), seed {recipe.seed}, {precision}; {what}"
        f"{ASR_NOTE}{dual}{held}"
    )
    return run.write_table("zeroshot", headers, rows, note)


def _detection_table(run: RunDir, ctx: RunContext) -> str:
    """One row per detector stage: AUROC and the filter's effect, on the same inputs."""
    headers = ["detector", "images", "AUROC", "TPR @ FPR", "FPR", "filter: ASR before", "after"]
    rows = []
    for label in ctx.detections:
        m = ctx.metrics[f"detection.{label}"]
        rows.append(
            [label, m["n_clean"], m["auroc"], m["tpr_at_fpr"], m["target_fpr"]]
            + [100 * m["asr_before_filter"], 100 * m["asr_after_filter"]]
        )
    note = (
        "Clean (negatives) and triggered (positives) versions of the same drawn test images "
        "(true class not the target). Filter: inputs scoring above the target-FPR quantile of "
        "clean validation scores are dropped; ASR % over the drawn images. ROC: figures/roc.png."
    )
    return run.write_table("detection", headers, rows, note)
