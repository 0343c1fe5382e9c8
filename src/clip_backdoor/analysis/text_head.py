"""Text-head separation: how far apart the zero-shot classifier's class captions sit.

Why: methods that tune the image side against a frozen text head (VPT, RVPT) can only lower
their cross-entropy as far as the class captions are apart at the model's logit scale. When the
captions of all classes sit close together (a high mean pairwise cosine) and the scale is small,
even an image feature placed exactly on its class's caption is barely preferred: the CE floor
below. Measured per evaluation set at the model's own scale and at CLIP's 100.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from clip_backdoor.core.config import Strict, validate
from clip_backdoor.core.registry import ANALYSES
from clip_backdoor.evaluation.zeroshot import text_classifier
from clip_backdoor.stages import StageOutput

CLIP_SCALE = 100.0  # CLIP's learnt logit scale, where it saturates in pretraining


class TextHeadSpec(Strict):
    templates: str | list[str] = Field(
        "photo", description="the captions of the classes (default: VPT/RVPT's proxy captions)"
    )
    precision: str = "auto"


def separation(classifier: torch.Tensor, scale: float) -> dict:
    """Off-diagonal cosines of the (C, D) unit class embeddings, and the CE floor: the mean CE
    of an image feature equal to its own class's embedding, at logit scale ``scale``."""
    similarity = classifier.double() @ classifier.double().T
    classes = len(similarity)
    off = similarity[~torch.eye(classes, dtype=torch.bool)]
    floor = torch.logsumexp(scale * similarity, dim=1) - scale * similarity.diagonal()
    return {
        "classes": classes,
        "mean_cosine": float(off.mean()),
        "max_cosine": float(off.max()),
        "scale": float(scale),
        "ce_floor": float(floor.mean()),
        "ce_uniform": math.log(classes),
    }


@ANALYSES.register("text_head")
class TextHead:
    def __init__(self, **params) -> None:
        self.spec = validate(TextHeadSpec, params, "analysis text_head")

    def run(self, ctx) -> StageOutput:
        own = float(ctx.model.logit_scale.detach().exp())
        results, table = {}, []
        for data in ctx.test_sets:
            classifier = text_classifier(
                ctx.model,
                ctx.tokenizer,
                data.classnames,
                self.spec.templates,
                precision=self.spec.precision,
            ).float()
            rows = [separation(classifier, scale) for scale in (own, CLIP_SCALE)]
            results[f"{data.name}/{data.split}"] = rows
            for row in rows:
                table.append(
                    [ctx.model.name, data.name, row["classes"], row["mean_cosine"]]
                    + [row["max_cosine"], row["scale"], row["ce_floor"], row["ce_uniform"]]
                )
                ctx.log(
                    f"text head {data.name}: mean cosine {row['mean_cosine']:.3f}, CE floor "
                    f"{row['ce_floor']:.3f} at scale {row['scale']:.1f}"
                )
        note = (
            "Mean and max pairwise cosine of the class-caption embeddings; CE floor: the mean "
            "cross-entropy of an image feature equal to its class's caption embedding, at the "
            "model's logit scale and at CLIP's 100 (uniform guessing: ln C)."
        )
        headers = ["model", "data", "classes", "mean cos", "max cos", "scale", "CE floor"]
        ctx.run.write_table(f"text_head_{ctx.label}", headers + ["ln C"], table, note)
        return StageOutput({"text_head": results})
