"""Isolation forest on the image embeddings (scikit-learn's), seeded.

Why: a global outlier score that needs no neighbourhood size; the score is the negated
``score_samples`` (short isolation paths = suspect)."""

from __future__ import annotations

import numpy as np
from pydantic import Field
from sklearn.ensemble import IsolationForest as SklearnIsolationForest

from clip_backdoor.core.registry import DATA_DETECTORS
from clip_backdoor.data_scan.base import DetectorSpec, PairDetector, PairEmbeddings
from clip_backdoor.data_scan.neighbours import by_rows


class IsolationForestSpec(DetectorSpec):
    trees: int = Field(100, ge=1, description="scikit-learn's n_estimators")
    samples: int = Field(256, ge=2, description="points per tree (scikit-learn's max_samples)")
    fit_on: int = Field(
        10_000,
        ge=2,
        description="pairs the trees draw their samples from (a seeded sample of the mix; all "
        "when fewer): each tree sees only `samples` of them, and scikit-learn's fit keeps "
        "per-point arrays of whatever it is given",
    )


@DATA_DETECTORS.register("isolation_forest")
class IsolationForest(PairDetector):
    name = "isolation_forest"
    spec_class = IsolationForestSpec

    def score(self, pairs: PairEmbeddings) -> np.ndarray:
        forest = SklearnIsolationForest(
            n_estimators=self.spec.trees,
            max_samples=min(self.spec.samples, len(pairs)),
            random_state=self.seed,
        )
        fit = pairs.images
        if len(fit) > self.spec.fit_on:
            rng = np.random.default_rng(self.seed)
            fit = fit[np.sort(rng.choice(len(fit), self.spec.fit_on, replace=False))]
        forest.fit(fit)
        return by_rows(len(pairs), lambda rows: -forest.score_samples(pairs.images[rows]))
