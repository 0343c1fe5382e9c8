"""LID: the maximum-likelihood local intrinsic dimensionality of a pair's image embedding.

Why: the baseline Huang et al. compare DAO with; high where the neighbourhood is sparse."""

from __future__ import annotations

import numpy as np

from clip_backdoor.core.registry import DATA_DETECTORS
from clip_backdoor.data_scan.base import NeighbourSpec, PairDetector, PairEmbeddings


@DATA_DETECTORS.register("lid")
class LID(PairDetector):
    name = "lid"
    spec_class = NeighbourSpec

    def score(self, pairs: PairEmbeddings) -> np.ndarray:
        spec = self.spec
        return pairs.neighbourhood(spec.k, spec.space, spec.reference, self.seed).lid[: len(pairs)]
