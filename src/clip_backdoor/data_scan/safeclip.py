"""SafeCLIP's split (Yang et al., ICML 2024): image-caption cosine, two-component Gaussian mixture.

SafeCLIP trains on the pairs whose image and caption agree and treats the rest as risky. Here a
two-component mixture (scikit-learn's) is fitted to the cosines and a pair's score is the log-odds
of the lower-mean component (never saturating at probability 1), made non-increasing in the
cosine. Why: under a *clean* model a poisoned pair's triggered image
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

        return monotone_in_cosine(cosine, by_rows(len(cosine), log_odds))


def monotone_in_cosine(cosine: np.ndarray, log_odds: np.ndarray) -> np.ndarray:
    """The log-odds made non-increasing in the cosine: a pair whose image and caption agree less
    is never less suspect. Above the cosine where the log-odds peak, each pair takes the highest
    log-odds of any pair agreeing at least as well; below it, the peak plus the distance to it,
    so the far tail ranks first and stays ordered.

    Why: two Gaussians of unequal spread give log-odds quadratic in the cosine, so far below a
    narrow low component the broad high one wins again. On mini-CLIP v1's BadNet mix (clean model,
    seed 0) the 190 poisoned pairs sat in that tail, log-odds -174 against the clean pairs' 0.36,
    and were ranked least suspect of all 19,021 (AUROC 0.004)."""
    order = np.argsort(-cosine, kind="stable")  # most agreeing first
    raised = np.empty_like(log_odds)
    raised[order] = np.maximum.accumulate(log_odds[order])
    peak = int(np.argmax(log_odds))
    below = cosine < cosine[peak]
    raised[below] = log_odds[peak] + (cosine[peak] - cosine[below])
    return raised
