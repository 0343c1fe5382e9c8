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
from clip_backdoor.registry import DATA_DETECTORS


class SafeCLIPSpec(DetectorSpec):
    components: int = Field(2, ge=2, le=2, description="SafeCLIP's two groups")


def pair_cosines(pairs: PairEmbeddings) -> np.ndarray:
    return (pairs.images * pairs.texts).sum(axis=1).astype(np.float64)


@DATA_DETECTORS.register("safeclip")
class SafeCLIP(PairDetector):
    name = "safeclip"
    spec_class = SafeCLIPSpec

    def score(self, pairs: PairEmbeddings) -> np.ndarray:
        cosine = pair_cosines(pairs)
        mixture = GaussianMixture(2, random_state=self.seed).fit(cosine[:, None])
        means = mixture.means_[:, 0]
        sds = np.sqrt(mixture.covariances_.reshape(2))
        low, high = np.argsort(means)
        log_low = np.log(mixture.weights_[low]) + norm.logpdf(cosine, means[low], sds[low])
        log_high = np.log(mixture.weights_[high]) + norm.logpdf(cosine, means[high], sds[high])
        return log_low - log_high
