"""Evaluation at a point of a run (the clean model, then after each stage that changes it):
CA, ASR where a set has the target, Perturbation Resistivity where the recipe asks.

``Points`` collects the rows of every point, and the PR results the figure needs.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import torch

from clip_backdoor.analysis.resistivity import MAIN, perturbation_resistivity
from clip_backdoor.artifacts import cache_key
from clip_backdoor.core.runs import RunDir
from clip_backdoor.data.fewshot import TargetFirst
from clip_backdoor.evaluation import FeatureCache, evaluate_zeroshot
from clip_backdoor.evaluation.features import model_fingerprint
from clip_backdoor.evaluation.metrics import ASR_NOTE
from clip_backdoor.evaluation.zeroshot import text_classifier
from clip_backdoor.stages import StageContext, target_index


@dataclass
class Points:
    templates: list[str]
    precision: str
    rows: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    resistivity: dict = field(default_factory=dict)  # point -> PR results (for the figure)

    def evaluate(self, ctx: StageContext, point: str, kind: str) -> list[dict]:
        """The rows of one point, timed into ``seconds``."""
        started = time.perf_counter()
        rows = [
            self._row(ctx, point, kind, data, first=i == 0) for i, data in enumerate(ctx.test_sets)
        ]
        self.seconds[point] = round(self.seconds.get(point, 0.0) + time.perf_counter() - started, 3)
        return rows

    def add(self, ctx: StageContext, point: str, kind: str) -> None:
        self.rows += self.evaluate(ctx, point, kind)

    def table(self, run: RunDir, ctx: StageContext) -> str:
        """tables/zeroshot.md: one row per point and set, and a note of what ASR means here."""
        recipe, points = ctx.recipe, self.rows
        headers = ["point", "model", "weights", "data", "split", "classes", "images", "CA %"]
        extra_k = [k for k in recipe.evaluation.topk if k != 1]
        headers += [f"top-{k} %" for k in extra_k]
        has_asr = any("asr" in p for p in points)
        if has_asr:
            headers += ["ASR %", "asr_all %"]
        rows = []
        for p in points:
            row: list = [p["point"], p["model"], p["weights"], p["data"], p["split"]]
            row += [p["classes"], p["n"], 100 * p["ca"]]
            row += [100 * p[f"top{k}"] for k in extra_k]
            if has_asr:
                row += [100 * p["asr"], 100 * p["asr_all"]] if "asr" in p else [math.nan] * 2
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
            f" ASR uses the text key '{key}' on every class prompt (CA: plain prompts)."
            if key
            else ""
        )
        held = (
            f" {len(ctx.validation)} clean images of {ctx.validation.name} were held out as the"
            " stages' validation data and are not in these numbers."
            if ctx.validation is not None
            else ""
        )
        note = (
            f"Zero-shot, {len(self.templates)} template(s), seed {recipe.seed}, "
            f"{self.precision}; {what}{ASR_NOTE}{dual}{held}"
        )
        return run.write_table("zeroshot", headers, rows, note)

    def _row(self, ctx: StageContext, point: str, kind: str, data, first: bool) -> dict:
        ev, state = ctx.recipe.evaluation, ctx.state
        named = state.target_first and state.target_name is not None
        if named and target_index(state.target_name, data) is None:
            data = TargetFirst(data, state.target_name)
        target = target_index(state.target_name, data) if state.trigger is not None else None
        trigger = state.trigger if target is not None else None
        options = dict(
            templates=self.templates,
            topk=ev.topk,
            batch_size=ev.batch_size,
            precision=self.precision,
            cache=ctx.cache,
            progress=ctx.progress,
        )
        if state.learner is not None:
            options["classifier"] = state.learner.classifier(data.classnames)
        metrics = evaluate_zeroshot(
            state.model, ctx.tokenizer, data, trigger=trigger, target=target, **options
        )
        key = getattr(trigger, "text_key", None)
        if key and state.learner is not None:  # a learned head (linear probe, prompt learner)
            metrics["text_key"] = "not applicable: the head is learned, no prompt to key"
        elif key:  # dual key: ASR with the text key on every prompt; image key alone beside it
            prompts = [f"{key} {t}" for t in self.templates]
            keyed = text_classifier(state.model, ctx.tokenizer, data.classnames, prompts)
            both = evaluate_zeroshot(
                state.model,
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
        row["model"] = state.model.name
        row["weights"] = model_fingerprint(state.model)[:12]  # stages change weights, not names
        row["classes"] = len(data.classnames)
        if ev.resistivity and first:  # the first set only: PR is a property of the model
            row.update(self._resistivity(ctx, point, data, options.get("classifier")))
        ctx.log(f"evaluation {point} on {data.name}: {metrics}")
        return row

    def _resistivity(self, ctx: StageContext, point: str, data, classifier) -> dict:
        ev, state = ctx.recipe.evaluation, ctx.state
        if classifier is None:
            classifier = text_classifier(
                state.model, ctx.tokenizer, data.classnames, self.templates, precision=ev.precision
            )
        extra = {}
        if state.trigger is not None and not state.trigger.is_identity:
            extra["trigger"] = lambda images, generator: state.trigger.apply(images)
        key = _resistivity_key(ctx, data, classifier)
        result = _cached_resistivity(ctx.cache, key)
        if result is None:
            result = perturbation_resistivity(
                state.model,
                data,
                classifier,
                ev.resistivity,
                ctx.recipe.seed,
                extra,
                precision=ev.precision,
            )
            if ctx.cache is not None and key is not None:
                ctx.cache.put(key, _resistivity_tensors(result))
        self.resistivity[point] = result
        return {"pr": result[MAIN]["pr"], "pr_all": {k: v["pr"] for k, v in result.items()}}


def _resistivity_key(ctx: StageContext, data, classifier) -> str | None:
    """PR's feature-cache key: what it measures depends on the model, the images, the class
    text rows, the trigger and the draw; None for a prompt learner's classifier (no weights to
    name), which is measured every time. Why cache it: a resumed or extended recipe evaluates
    its cached points again, and PR on 1,000 images costs a minute a point where the cached
    features make CA and ASR instant."""
    if not isinstance(classifier, torch.Tensor):
        return None
    ev, state = ctx.recipe.evaluation, ctx.state
    trigger = state.trigger.fingerprint() if state.trigger is not None else "clean"
    rows = hashlib.sha1(classifier.detach().float().cpu().numpy().tobytes()).hexdigest()
    return cache_key(
        "resistivity",
        model_fingerprint(state.model),
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
