"""``kind: scan`` recipe stages: scan the model (or prompt learner) as the stages before left it.

``method`` names one scanner, several (comma-separated, as ``--scanners``) or ``all``. The
scan sees the model, the learner and clean images only; what the run knows about the truth (an
attack stage ran, its target, the ASR of the last evaluation) is recorded beside the verdict
afterwards, for the zoo's tables, never passed in.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from clip_backdoor.core.config import ModelSpec, Strict, validate
from clip_backdoor.core.registry import SCANNERS
from clip_backdoor.scanning.base import ScanSubject
from clip_backdoor.scanning.report import write_report
from clip_backdoor.scanning.scan import ALL, build_scanners, scan
from clip_backdoor.scanning.subject import load_subject, scan_images
from clip_backdoor.stages import StageKind, StageOutput, registered_stage


class ScanImagesSpec(Strict):
    name: str | None = Field(None, description="data set (default: the first evaluation set's)")
    split: str = "train"
    classes: Literal["all", "base", "novel"] = Field("all", description="CoOp's class halves")
    size: int | None = Field(None, gt=0, description="synthetic set only")


class ScanStageSpec(Strict):
    data: ScanImagesSpec = Field(default_factory=ScanImagesSpec)
    images: int = Field(256, ge=2, description="seeded clean images the scanners use")
    budget: Literal["fast", "default", "thorough"] = Field(
        "default", description="how much the scanners spend (scanning/budget.py)"
    )
    scanners: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per scanner, its settings (e.g. decree: {steps: 300})"
    )
    reference: ModelSpec | None = Field(
        None, description="a clean model of the same architecture: thresholds relative to it"
    )


class ScanStage:
    needs_validation = False

    def __init__(self, method: str, **params) -> None:
        self.method = method
        self.spec = validate(ScanStageSpec, params, f"scan stage {method}")
        self.scanners = build_scanners(
            ALL if method == ALL else method.split(","), self.spec.scanners, self.spec.budget
        )

    def run(self, ctx) -> StageOutput:
        spec, model = self.spec, ctx.model
        name = spec.data.name or ctx.recipe.data[0].name
        images = scan_images(
            name,
            spec.data.split,
            spec.images,
            model.image_size,
            model.pixel_transform(),
            ctx.recipe.seed,
            spec.data.size,
            ctx.progress,
            spec.data.classes,
        )
        subject = ScanSubject(model, ctx.tokenizer, ctx.label or "model", ctx.learner)
        reference = None
        if spec.reference is not None:
            ref = spec.reference
            reference = load_subject(ref.name, ref.pretrained, ref.arch, ctx.recipe.device)
        report = scan(
            subject,
            images,
            self.scanners,
            ctx.recipe.seed,
            reference,
            ctx.progress,
            ctx.log,
            skip_inapplicable=self.method == ALL,
        )
        folder = ctx.run.path / "scans" / (ctx.label or self.method)
        context = {"data": images.source, "images": len(images), "seed": ctx.recipe.seed}
        write_report(report, ctx.run, folder, context)
        model.eval()  # the stages after it see the model as it was
        truth = {"attacked": ctx.trigger is not None and not ctx.trigger.is_identity}
        truth["target"] = ctx.target_name
        kind = "prompt_learner" if ctx.learner is not None else "checkpoint"
        summary = {**report.summary(), **context, "kind": kind, "truth": truth}
        summary["budget"] = spec.budget
        return StageOutput({**summary, "folder": str(folder)})


registered_stage(
    StageKind(
        "scan",
        SCANNERS,
        build=lambda method, params: ScanStage(method, **params),
        changes_model=False,
        takes_all=True,
        several=True,
    )
)
