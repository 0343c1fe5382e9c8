"""Attribute probe: how much a model's image features know that is not the class.

Why: a web-trained CLIP learns colours, light, layout and background because its captions talk
about them; a model pretrained on class-name captions alone (mini-CLIP v1) need not. Linear
probes (scikit-learn's logistic regression on standardised frozen features) predict the pixel
attributes of ``data/web_captions.py`` on each evaluation set's images: fit on a seeded half,
scored on the other half, next to the majority-class rate of that half.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from clip_backdoor.core.config import Strict, validate
from clip_backdoor.core.precision import autocast
from clip_backdoor.core.registry import ANALYSES
from clip_backdoor.data.web_captions import ATTRIBUTES, pixel_attributes
from clip_backdoor.evaluation.features import iterate_batches
from clip_backdoor.stages import StageOutput


class AttributeProbeSpec(Strict):
    fit_share: float = Field(0.5, gt=0, lt=1, description="share of each set the probes fit on")
    max_iter: int = Field(2000, ge=100, description="logistic regression iterations")
    C: float = Field(1.0, gt=0, description="inverse L2 strength of the probes")
    precision: str = "auto"


@torch.inference_mode()
def features_and_attributes(model, dataset, precision: str = "auto", progress: bool = False):
    """Raw image features (N, D) and the attribute labels {name: (N,)} of the same images."""
    features, labels = [], {name: [] for name in ATTRIBUTES}
    total = -(-len(dataset) // 256)
    for images, _ in tqdm(
        iterate_batches(dataset, 256), total=total, disable=not progress, desc="attributes"
    ):
        with autocast(precision):
            features.append(model.encode_image(images, normalize=False).float())
        for image in images:
            for name, value in pixel_attributes(image).labels().items():
                labels[name].append(value)
    return torch.cat(features).numpy(), {k: np.asarray(v) for k, v in labels.items()}


def probe_accuracies(features, labels: dict, spec: AttributeProbeSpec, seed: int) -> list[dict]:
    """Per attribute: probe accuracy and majority rate on the held-out part."""
    order = np.random.default_rng(seed).permutation(len(features))
    cut = int(spec.fit_share * len(features))
    fit, held = order[:cut], order[cut:]
    rows = []
    for name, values in labels.items():
        majority = np.bincount(values[fit]).argmax()
        row = {
            "attribute": name,
            "classes": int(len(np.unique(values))),
            "majority": float((values[held] == majority).mean()),
        }
        if len(np.unique(values[fit])) < 2:
            row["accuracy"] = row["majority"]  # one class in the fit part: nothing to learn
        else:
            probe = make_pipeline(
                StandardScaler(),
                LogisticRegression(C=spec.C, max_iter=spec.max_iter, random_state=seed),
            )
            probe.fit(features[fit], values[fit])
            row["accuracy"] = float(probe.score(features[held], values[held]))
        rows.append(row)
    return rows


@ANALYSES.register("attribute_probe")
class AttributeProbe:
    def __init__(self, **params) -> None:
        self.spec = validate(AttributeProbeSpec, params, "analysis attribute_probe")

    def run(self, ctx) -> StageOutput:
        seed, results, table = ctx.recipe.seed, {}, []
        for data in ctx.test_sets:
            features, labels = features_and_attributes(
                ctx.model, data, self.spec.precision, ctx.progress
            )
            rows = probe_accuracies(features, labels, self.spec, seed)
            results[f"{data.name}/{data.split}"] = rows
            for row in rows:
                table.append(
                    [
                        ctx.model.name,
                        data.name,
                        row["attribute"],
                        row["classes"],
                        100 * row["accuracy"],
                        100 * row["majority"],
                    ]
                )
                ctx.log(
                    f"attribute probe {data.name} {row['attribute']}: "
                    f"{row['accuracy']:.4f} (majority {row['majority']:.4f})"
                )
        note = (
            f"Logistic regression on standardised raw image features, fit on a seeded "
            f"{self.spec.fit_share:.0%} of each set and scored on the rest (seed {seed})."
        )
        headers = ["model", "data", "attribute", "classes", "probe %", "majority %"]
        ctx.run.write_table(f"attribute_probe_{ctx.label}", headers, table, note)
        return StageOutput({"sets": results})
