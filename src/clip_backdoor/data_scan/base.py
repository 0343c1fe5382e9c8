"""The protocol every pair detector runs under, so their scores are compared the same way.

A detector sees a training mix only as embeddings: one image and one caption embedding per pair
(L2-normalised, from the model being defended or from a clean one). It returns one score per
pair, higher = more suspect; the ranking is the user's triage list, and a cleaning defense
removes the top of it. The neighbourhood detectors (k-distance, LID, SLOF, DAO) share one
k-nearest-neighbour search per mix (``neighbours.Neighbourhood``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from clip_backdoor.core.config import Strict, validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import DATA_DETECTORS

Space = Literal["image", "pair"]


class DetectorSpec(Strict):
    """Settings every detector takes; neighbourhood detectors add ``k`` and ``space``."""


class NeighbourSpec(DetectorSpec):
    k: int = Field(16, ge=2, description="neighbours (Huang et al.'s DAODetector(k=16))")
    space: Space = Field(
        "image",
        description="whose neighbours: 'image' (image embeddings among images, Huang et al.'s "
        "call) or 'pair' (each image among every image and caption of the mix)",
    )
    reference: int | None = Field(
        1024,
        ge=2,
        description="pairs per random reference batch a point's neighbours are sought in (None: "
        "the whole mix). Huang et al. score each sample against the other samples of a random "
        "training batch (their configs: 1,024), so a poisoned pair meets only the few other "
        "poisoned pairs of its batch, fewer than k; against the whole mix the poisoned pairs "
        "form one dense cluster of their own",
    )


@dataclass
class PairEmbeddings:
    """Image and caption embeddings (N, D) of a mix, row i = pair i, L2-normalised float32."""

    images: np.ndarray
    texts: np.ndarray
    _neighbourhoods: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.images = _normalised(self.images, "image")
        self.texts = _normalised(self.texts, "caption")
        if self.images.shape != self.texts.shape:
            raise ConfigError(
                f"{len(self.images)} image embeddings of width {self.images.shape[1]} but "
                f"{len(self.texts)} caption embeddings of width {self.texts.shape[1]}"
            )

    def __len__(self) -> int:
        return len(self.images)

    def neighbourhood(self, k: int, space: Space, reference: int | None = None, seed: int = 0):
        """The k-NN search of ``space`` within seeded reference batches of ``reference`` pairs
        (None: the whole mix), done once per setting and mix."""
        from clip_backdoor.data_scan.neighbours import Neighbourhood

        key = (k, space, reference, seed if reference else None)
        if key not in self._neighbourhoods:
            self._neighbourhoods[key] = Neighbourhood.of(self, k, space, reference, seed)
        return self._neighbourhoods[key]


def _normalised(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ConfigError(f"{what} embeddings must be a non-empty (N, D) array, got {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class PairDetector:
    """Base of every detector: ``spec_class`` validates its params; ``score`` ranks pairs."""

    name = "detector"
    spec_class: type[DetectorSpec] = DetectorSpec

    def __init__(self, seed: int = 0, **params) -> None:
        self.seed = seed
        self.spec = validate(self.spec_class, params, f"data detector {self.name}")

    def score(self, pairs: PairEmbeddings) -> np.ndarray:
        """One float per pair, higher = more suspect."""
        raise NotImplementedError


def build_detector(name: str, seed: int = 0, **params) -> PairDetector:
    return DATA_DETECTORS.get(name)(seed=seed, **params)
