"""Isolation forest on the image embeddings (scikit-learn's), seeded.

Why: a global outlier score that needs no neighbourhood size; the score is the negated
``score_samples`` (short isolation paths = suspect)."""

from __future__ import annotations

import numpy as np
from pydantic import Field
from sklearn.ensemble import IsolationForest as SklearnIsolationForest

from clip_backdoor.data_scan.base import DetectorSpec, PairDetector, PairEmbeddings
from clip_backdoor.registry import DATA_DETECTORS


class IsolationForestSpec(DetectorSpec):
    trees: int = Field(100, ge=1, description="scikit-learn's n_estimators")
    samples: int = Field(256, ge=2, description="points per tree (scikit-learn's max_samples)")


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
        return -forest.fit(pairs.images).score_samples(pairs.images)
