"""The protocol every input-level detector runs under, so their AUROCs are comparable.

A detector (registered in ``DETECTORS``) is fit on the run's clean validation images and then
scores inputs, higher meaning "more likely triggered" (docs/methods.md 6). The run draws, with the
recipe's seed, the same test images for every detector: images whose true class is not the
target, scored clean (negatives) and triggered (positives). Reported: AUROC, the TPR at a clean
FPR, AUROC against successful attacks only, and a filtering mode, whose threshold comes from
the validation scores (never from the test scores it is judged on), that drops flagged inputs
before classification.
"""

from __future__ import annotations

import csv
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.config import Strict, validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.runs import RunDir
from clip_backdoor.data.fewshot import IndexSubset
from clip_backdoor.evaluation import resolve_templates
from clip_backdoor.evaluation.detection import detection_metrics, roc_figure, threshold_at_fpr
from clip_backdoor.evaluation.features import iterate_batches
from clip_backdoor.evaluation.zeroshot import text_classifier
from clip_backdoor.stages import StageOutput


class DetectorSpec(Strict):
    images: int = Field(
        500,
        ge=2,
        description="test images (true class not the target) scored clean and triggered; the "
        "same seeded draw for every detector of a run, so they are compared on the same inputs",
    )
    fpr: float = Field(0.05, gt=0, lt=1, description="clean false-positive rate (TPR, filter)")
    batch_size: int = Field(64, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"


class ZeroShot:
    """The model and its zero-shot classifier, as the detectors query them."""

    def __init__(self, model, classifier: torch.Tensor, precision: str) -> None:
        self.model, self.classifier, self.precision = model, classifier, precision
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Cosine logits (N, C) of pixel images, ``chunk`` at a time (memory stays flat)."""
        out = []
        for start in range(0, len(images), chunk):
            batch = images[start : start + chunk].to(self.device)
            with precision_mod.autocast(self.precision, self.device):
                features = self.model.encode_image(batch).float()
            out.append(features.cpu() @ self.classifier.T)
        return torch.cat(out)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(dim=1)


class Detector:
    """Subclasses set ``name`` and ``spec_type``, and implement ``fit`` and ``score``."""

    name = "detector"
    spec_type: type[DetectorSpec] = DetectorSpec
    needs_validation = True  # the runner holds out clean validation images for it

    def __init__(self, **params) -> None:
        self.spec = validate(self.spec_type, params, f"detector {self.name}")

    def fit(self, zero_shot: ZeroShot, clean: torch.Tensor, seed: int) -> None:
        """Learn what clean inputs look like from held-out clean images (N, 3, H, W)."""
        self.zero_shot = zero_shot

    def score(self, images: torch.Tensor, kind: str) -> torch.Tensor:
        """(B,) scores of a batch; ``kind`` is validation, clean or triggered (for reports)."""
        raise NotImplementedError

    def report(self, ctx, label: str) -> dict:
        """Extra results and figures after scoring (default: none)."""
        return {}

    def scores(self, images: torch.Tensor, kind: str, progress: bool) -> torch.Tensor:
        size = self.spec.batch_size
        batches = range(0, len(images), size)
        desc = f"{self.name} {kind}"
        parts = [
            self.score(images[start : start + size], kind).float().cpu()
            for start in tqdm(batches, desc=desc, disable=not progress)
        ]
        return torch.cat(parts)

    def run(self, ctx) -> StageOutput:
        spec, seed, label = self.spec, ctx.recipe.seed, ctx.label or self.name
        target = ctx.target
        if ctx.trigger is None or ctx.trigger.is_identity or target is None:
            raise ConfigError(
                f"detector {self.name} needs a trigger and a target in the first evaluation set:"
                " put it after an attack stage, or set evaluation.trigger and evaluation.target"
            )
        data = ctx.test_set
        pool = [i for i, t in enumerate(data.targets) if t != target]
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(pool, min(spec.images, len(pool)), replace=False).tolist())
        clean = _load(IndexSubset(data, chosen), spec.batch_size)
        triggered = torch.cat(
            [ctx.trigger.apply(clean[i : i + 256]) for i in range(0, len(clean), 256)]
        )
        held = ctx.validation
        picked = sorted(rng.choice(len(held), min(spec.images, len(held)), replace=False).tolist())
        validation = _load(IndexSubset(held, picked), spec.batch_size)

        precision = precision_mod.resolve(spec.precision, next(ctx.model.parameters()).device)
        templates = resolve_templates(ctx.recipe.evaluation.templates)
        classifier = text_classifier(
            ctx.model, ctx.tokenizer, data.classnames, templates, precision=precision
        )
        zero_shot = ZeroShot(ctx.model, classifier, precision)
        self.fit(zero_shot, validation, seed)
        progress = ctx.progress
        s_val = self.scores(validation, "validation", progress)
        s_clean = self.scores(clean, "clean", progress)
        s_trig = self.scores(triggered, "triggered", progress)
        labels = torch.as_tensor([data.targets[i] for i in chosen])
        p_clean, p_trig = zero_shot.predict(clean), zero_shot.predict(triggered)

        metrics = detection_metrics(s_clean.numpy(), s_trig.numpy(), spec.fpr)
        success = (p_trig == target).numpy()
        if success.any():
            metrics["auroc_successful"] = detection_metrics(
                s_clean.numpy(), s_trig.numpy()[success], spec.fpr
            )["auroc"]
        metrics.update(_filtering(s_val, s_clean, s_trig, p_clean, p_trig, labels, target, spec))
        _write_scores(ctx, label, chosen, s_clean, s_trig, p_clean, p_trig, labels)
        metrics.update(self.report(ctx, label))
        metrics["validation_images"] = len(validation)
        ctx.log(
            f"detector {label}: AUROC {metrics['auroc']:.4f}, TPR {metrics['tpr_at_fpr']:.4f} at "
            f"FPR {spec.fpr:g} ({len(chosen)} clean + {len(chosen)} triggered test images)"
        )
        scores = {"clean": s_clean.tolist(), "triggered": s_trig.tolist()}
        return StageOutput(metrics, detections=scores)


def _load(dataset, batch_size: int) -> torch.Tensor:
    return torch.cat([images for images, _ in iterate_batches(dataset, batch_size)])


def _filtering(s_val, s_clean, s_trig, p_clean, p_trig, labels, target, spec) -> dict:
    """Flag (score > a threshold set on validation scores for the target FPR) and drop: what
    gets through. CA and ASR here are over the drawn images (none of the target class)."""
    threshold = threshold_at_fpr(s_val.numpy(), spec.fpr)
    kept_clean, kept_trig = s_clean <= threshold, s_trig <= threshold
    correct = p_clean == labels
    return {
        "filter_threshold": threshold,
        "filter_fpr": float((~kept_clean).float().mean()),
        "filter_tpr": float((~kept_trig).float().mean()),
        "ca_before_filter": float(correct.float().mean()),
        "ca_after_filter": float((correct & kept_clean).float().mean()),
        "asr_before_filter": float((p_trig == target).float().mean()),
        "asr_after_filter": float(((p_trig == target) & kept_trig).float().mean()),
    }


def _write_scores(ctx, label, chosen, s_clean, s_trig, p_clean, p_trig, labels) -> None:
    folder = ctx.run.path / "artifacts" / "detection"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{label}.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["index", "label", "score_clean", "score_triggered", "pred_clean", "pred_triggered"]
        )
        for row in zip(
            chosen,
            labels.tolist(),
            s_clean.tolist(),
            s_trig.tolist(),
            p_clean.tolist(),
            p_trig.tolist(),
            strict=True,
        ):
            writer.writerow(row)


def detection_report(run: RunDir, outputs: dict[str, StageOutput]) -> str:
    """After the last stage: the detectors' ROC curves and one table row per detector stage
    (AUROC and the filter's effect, on the same inputs)."""
    scores = {label: out.detections for label, out in outputs.items() if out.detections}
    if not scores:
        return ""
    roc_figure(scores, run.path / "figures" / "roc.png")
    headers = ["detector", "images", "AUROC", "TPR @ FPR", "FPR", "filter: ASR before", "after"]
    rows = []
    for label in scores:
        m = outputs[label].metrics
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
