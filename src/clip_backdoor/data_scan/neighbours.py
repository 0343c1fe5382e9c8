"""One k-nearest-neighbour search per mix, shared by the neighbourhood detectors.

Neighbours are sought within seeded random reference batches of the mix (Huang et al.'s
protocol: the other samples of a training batch), or in the whole mix. scikit-learn's
brute-force search works through each query set in chunks sized by its ``working_memory``
setting, so memory stays flat in the mix size (no N x N matrix), and with batches the cost
grows linearly with N; a point is never its own neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.neighbors import NearestNeighbors

from clip_backdoor.core.errors import ConfigError

EPS = 1e-12
ROWS = 8192  # rows per block of the per-point scores


@dataclass
class Neighbourhood:
    """For every reference point: its k nearest distances (ascending) and their indices.

    Rows 0..N-1 are the pairs' images; in the 'pair' space rows N..2N-1 are their captions
    (references too, since a neighbour of an image may be a caption)."""

    distances: np.ndarray  # (M, k)
    indices: np.ndarray  # (M, k)
    pairs: int
    _lid: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls, pairs, k: int, space: str, reference: int | None = None, seed: int = 0
    ) -> Neighbourhood:
        n = len(pairs)
        batches = [np.arange(n)]
        if reference is not None and reference < n:
            order = np.random.default_rng(seed).permutation(n)
            batches = np.array_split(order, n // reference)  # sizes reference .. 2 * reference
        per_point = 1 if space == "image" else 2
        if min(len(b) for b in batches) * per_point <= k:
            raise ConfigError(
                f"a mix of {n} pairs has fewer than k + 1 = {k + 1} points to find {k} "
                f"neighbours among"
                + (f" (reference batches of {reference} pairs)" if reference else "")
            )
        distances = np.empty((n * per_point, k))
        indices = np.empty((n * per_point, k), dtype=np.int64)
        search = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean")
        every = pairs.images if space == "image" else np.concatenate([pairs.images, pairs.texts])
        for batch in batches:
            rows = batch if space == "image" else np.concatenate([batch, batch + n])
            found, where = search.fit(every[rows]).kneighbors()  # no X: not its own neighbour
            distances[rows], indices[rows] = found, rows[where]
        return cls(distances, indices, n)

    @property
    def k_distance(self) -> np.ndarray:
        """Distance to the k-th neighbour, for every reference point."""
        return np.maximum(self.distances[:, -1], EPS)

    @property
    def lid(self) -> np.ndarray:
        """Levina-Bickel maximum-likelihood local intrinsic dimensionality of every point."""
        if self._lid is None:
            kdist = self.k_distance

            def block(rows: slice) -> np.ndarray:
                ratios = np.maximum(self.distances[rows, :-1], EPS) / kdist[rows, None]
                mean_log = np.log(ratios).sum(axis=1) / self.distances.shape[1]
                return -1.0 / np.minimum(mean_log, -EPS)

            self._lid = by_rows(len(kdist), block)
        return self._lid


def by_rows(n: int, block, rows: int = ROWS) -> np.ndarray:
    """``block(slice)`` over consecutive slices of ``rows`` rows, concatenated: temporaries of
    shape (rows, k) instead of (N, k), so scratch memory stays flat in the mix size: each block
    is written into the output as it comes, never held in a list beside it."""
    out = None
    for start in range(0, n, rows):
        part = block(slice(start, min(start + rows, n)))
        if out is None:
            out = np.empty((n, *part.shape[1:]), dtype=part.dtype)
        out[start : start + len(part)] = part
    if out is None:
        raise ValueError("by_rows needs at least one row")
    return out
