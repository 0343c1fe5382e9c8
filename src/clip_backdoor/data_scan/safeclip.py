"""SafeCLIP's split (Yang et al., ICML 2024): image-caption cosine, two-component Gaussian mixture.

SafeCLIP trains on the pairs whose image and caption agree and treats the rest as risky. Here a
two-component mixture (scikit-learn's) is fitted to the cosines and a pair's score is the log-odds
of the lower-mean component, so the ranking follows the mixture rather than the raw cosine yet
never saturates at probability 1. Why: under a *clean* model a poisoned pair's triggered image
does not match its target caption; under the poisoned model it may match too well, which the
neighbourhood detectors see instead."""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy.stats import norm
from sklearn.mixture import GaussianMixture

from clip_backdoor.data_scan.base import DetectorSpec, PairDetector, PairEmbeddings
from clip_backdoor.data_scan.neighbours import by_rows
from clip_backdoor.registry import DATA_DETECTORS


class SafeCLIPSpec(DetectorSpec):
    components: int = Field(2, ge=2, le=2, description="SafeCLIP's two groups")
    fit_on: int = Field(
        20_000,
        ge=10,
        description="cosines the mixture is fitted on (a seeded sample of the mix; all of them "
        "when fewer): five parameters need no more, and memory stays flat in the mix size",
    )


def pair_cosines(pairs: PairEmbeddings) -> np.ndarray:
    return np.einsum("ij,ij->i", pairs.images, pairs.texts).astype(np.float64)  # no (N, D) temp


@DATA_DETECTORS.register("safeclip")
class SafeCLIP(PairDetector):
    name = "safeclip"
    spec_class = SafeCLIPSpec

    def score(self, pairs: PairEmbeddings) -> np.ndarray:
        cosine = pair_cosines(pairs)
        sample = cosine
        if len(cosine) > self.spec.fit_on:
            rng = np.random.default_rng(self.seed)
            sample = cosine[np.sort(rng.choice(len(cosine), self.spec.fit_on, replace=False))]
        mixture = GaussianMixture(2, random_state=self.seed).fit(sample[:, None])
        means = mixture.means_[:, 0]
        sds = np.sqrt(mixture.covariances_.reshape(2))
        low, high = np.argsort(means)
        weights = np.log(mixture.weights_)

        def log_odds(rows: slice) -> np.ndarray:
            c = cosine[rows]
            low_part = weights[low] + norm.logpdf(c, means[low], sds[low])
            return low_part - weights[high] - norm.logpdf(c, means[high], sds[high])

        return by_rows(len(cosine), log_odds)
