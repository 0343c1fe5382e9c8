"""One k-nearest-neighbour search per mix, shared by the neighbourhood detectors.

scikit-learn's brute-force search works through the query set in chunks sized by its
``working_memory`` setting, so memory stays flat in the mix size (no N x N matrix); the points
themselves are never their own neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

from clip_backdoor.errors import ConfigError

EPS = 1e-12


@dataclass
class Neighbourhood:
    """For every reference point: its k nearest distances (ascending) and their indices.

    Rows 0..N-1 are the pairs' images; in the 'pair' space rows N..2N-1 are their captions
    (references too, since a neighbour of an image may be a caption)."""

    distances: np.ndarray  # (M, k)
    indices: np.ndarray  # (M, k)
    pairs: int

    @classmethod
    def of(cls, pairs, k: int, space: str) -> Neighbourhood:
        points = pairs.images if space == "image" else np.concatenate([pairs.images, pairs.texts])
        if len(points) <= k:
            raise ConfigError(
                f"a mix of {len(pairs)} pairs has fewer than k + 1 = {k + 1} points to find "
                f"{k} neighbours among"
            )
        search = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean")
        distances, indices = search.fit(points).kneighbors()  # no X: a point is not its own
        return cls(distances.astype(np.float64), indices, len(pairs))

    @property
    def k_distance(self) -> np.ndarray:
        """Distance to the k-th neighbour, for every reference point."""
        return np.maximum(self.distances[:, -1], EPS)

    @property
    def lid(self) -> np.ndarray:
        """Levina-Bickel maximum-likelihood local intrinsic dimensionality of every point."""
        ratios = np.maximum(self.distances, EPS) / self.k_distance[:, None]
        mean_log = np.log(ratios[:, :-1]).sum(axis=1) / self.distances.shape[1]
        return -1.0 / np.minimum(mean_log, -EPS)
