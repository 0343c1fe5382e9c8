"""k-distance: the distance from a pair's image to its k-th nearest neighbour.

Why: Huang et al. (ICLR 2025) find poisoned pairs sparse in their local neighbourhood of a
CLIP's embedding space (the backdoor maps them to one region few clean images share)."""

from __future__ import annotations

import numpy as np

from clip_backdoor.core.registry import DATA_DETECTORS
from clip_backdoor.data_scan.base import NeighbourSpec, PairDetector, PairEmbeddings


@DATA_DETECTORS.register("k_distance")
class KDistance(PairDetector):
    name = "k_distance"
    spec_class = NeighbourSpec

    def score(self, pairs: PairEmbeddings) -> np.ndarray:
        spec = self.spec
        return pairs.neighbourhood(spec.k, spec.space, spec.reference, self.seed).k_distance[
            : len(pairs)
        ]
