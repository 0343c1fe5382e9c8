"""DAO (dimensionality-aware outlier score, Anderberg et al.; Huang et al.'s best detector).

For a point q with neighbours o: the mean over o of LID(o) * log(kdist(q) / kdist(o)), the log of
the paper's (kdist(q) / kdist(o)) ** LID(o). Huang et al.'s code takes the log form (it is
stable where LID is large); so does this one. Why: SLOF's ratio weighed by how fast volume grows
with distance around each neighbour, so a ratio means the same in a flat and in a high-dimensional
neighbourhood."""

from __future__ import annotations

import numpy as np

from clip_backdoor.core.registry import DATA_DETECTORS
from clip_backdoor.data_scan.base import NeighbourSpec, PairDetector, PairEmbeddings
from clip_backdoor.data_scan.neighbours import by_rows


@DATA_DETECTORS.register("dao")
class DAO(PairDetector):
    name = "dao"
    spec_class = NeighbourSpec

    def score(self, pairs: PairEmbeddings) -> np.ndarray:
        spec = self.spec
        hood = pairs.neighbourhood(spec.k, spec.space, spec.reference, self.seed)
        kdist, lid = hood.k_distance, hood.lid

        def block(rows: slice) -> np.ndarray:
            around = hood.indices[rows]
            return (lid[around] * np.log(kdist[rows, None] / kdist[around])).mean(axis=1)

        return by_rows(len(pairs), block)
