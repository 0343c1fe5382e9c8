"""SLOF (simplified local outlier factor): a point's k-distance over its neighbours', averaged.

Why: k-distance alone flags points of a sparse but clean region; dividing by the neighbours'
own k-distances makes the score local (Schubert et al.'s simplified LOF, Huang et al.'s SLOF)."""

from __future__ import annotations

import numpy as np

from clip_backdoor.core.registry import DATA_DETECTORS
from clip_backdoor.data_scan.base import NeighbourSpec, PairDetector, PairEmbeddings
from clip_backdoor.data_scan.neighbours import by_rows


@DATA_DETECTORS.register("slof")
class SLOF(PairDetector):
    name = "slof"
    spec_class = NeighbourSpec

    def score(self, pairs: PairEmbeddings) -> np.ndarray:
        spec = self.spec
        hood = pairs.neighbourhood(spec.k, spec.space, spec.reference, self.seed)
        kdist = hood.k_distance
        return by_rows(len(pairs), lambda r: (kdist[r, None] / kdist[hood.indices[r]]).mean(axis=1))
