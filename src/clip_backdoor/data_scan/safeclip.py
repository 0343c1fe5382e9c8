"""SafeCLIP's split (Yang et al., ICML 2024): image-caption cosine, two-component Gaussian mixture.

SafeCLIP trains on the pairs whose image and caption agree and treats the rest as risky. Here a
two-component mixture (scikit-learn's) is fitted to the cosines and a pair's score is the log-odds
of the lower-mean component (never saturating at probability 1), made non-increasing in the
cosine. Why: under a *clean* model a poisoned pair's triggered image
does not match its target caption; under the poisoned model it may match too well, which the
neighbourhood detectors see instead.

Memory stays flat in the mix size: the mixture is fitted on a seeded sample, and the scores are
computed in blocks of rows from three numbers of the whole mix (``Envelope``), with no per-pair
array but the output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field
from scipy.stats import norm
from sklearn.mixture import GaussianMixture

from clip_backdoor.core.registry import DATA_DETECTORS
from clip_backdoor.data_scan.base import DetectorSpec, PairDetector, PairEmbeddings
from clip_backdoor.data_scan.neighbours import ROWS, by_rows


class SafeCLIPSpec(DetectorSpec):
    components: int = Field(2, ge=2, le=2, description="SafeCLIP's two groups")
    fit_on: int = Field(
        20_000,
        ge=10,
        description="cosines the mixture is fitted on (a seeded sample of the mix; all of them "
        "when fewer): five parameters need no more, and memory stays flat in the mix size",
    )


def pair_cosines(pairs: PairEmbeddings, rows: slice = slice(None)) -> np.ndarray:
    images, texts = pairs.images[rows], pairs.texts[rows]  # views: no copy of the rows
    return np.einsum("ij,ij->i", images, texts).astype(np.float64)  # no (N, D) temp


def sampled_cosines(pairs: PairEmbeddings, sample: np.ndarray, rows: int = ROWS) -> np.ndarray:
    """The cosines of the pairs at the sorted indices ``sample``, a block of rows at a time:
    indexing the embeddings with ``sample`` would copy (len(sample), D) twice."""
    parts = []
    for start in range(0, len(pairs), rows):
        lo, hi = np.searchsorted(sample, [start, start + rows])
        if hi > lo:
            block = pair_cosines(pairs, slice(start, start + rows))
            parts.append(block[sample[lo:hi] - start])
    return np.concatenate(parts)


@dataclass(frozen=True)
class LogOdds:
    """Log-odds of the lower-mean component against the higher one: a quadratic in the cosine."""

    weights: np.ndarray  # log mixture weights, (low, high)
    means: np.ndarray
    sds: np.ndarray

    @classmethod
    def fit(cls, cosines: np.ndarray, seed: int) -> LogOdds:
        mixture = GaussianMixture(2, random_state=seed).fit(cosines[:, None])
        order = np.argsort(mixture.means_[:, 0])  # low, high
        sds = np.sqrt(mixture.covariances_.reshape(2))
        return cls(np.log(mixture.weights_)[order], mixture.means_[order, 0], sds[order])

    def __call__(self, c: np.ndarray) -> np.ndarray:
        low = self.weights[0] + norm.logpdf(c, self.means[0], self.sds[0])
        return low - self.weights[1] - norm.logpdf(c, self.means[1], self.sds[1])


@dataclass(frozen=True)
class Envelope:
    """The log-odds made non-increasing in the cosine: a pair whose image and caption agree less
    is never less suspect. Above the cosine where the log-odds peak over the mix, each pair takes
    the highest log-odds of any pair agreeing at least as well; below it, the peak plus the
    distance to it, so the far tail ranks first and stays ordered.

    Why: two Gaussians of unequal spread give log-odds quadratic in the cosine, so far below a
    narrow low component the broad high one wins again. On mini-CLIP v1's BadNet mix (clean model,
    seed 0) the 190 poisoned pairs sat in that tail, log-odds -174 against the clean pairs' 0.36,
    and were ranked least suspect of all 19,021 (AUROC 0.004).

    Because the log-odds are a quadratic f, the highest f over the pairs agreeing at least as well
    as c is max(f(c), f(top)), top = the mix's highest cosine: a convex f peaks at an end of the
    range, and a concave one, on the pairs from the peak up, falls from c on (or sits at the peak).
    So three numbers of the whole mix (the peak's cosine and value, the top's value) give every
    score one block of rows at a time, exactly as a sort of the whole mix would."""

    log_odds: LogOdds
    peak_cosine: float
    peak: float
    at_top: float

    @classmethod
    def over(cls, pairs: PairEmbeddings, log_odds: LogOdds, rows: int = ROWS) -> Envelope:
        peak_cosine, peak, top = np.nan, -np.inf, -np.inf
        for start in range(0, len(pairs), rows):
            c = pair_cosines(pairs, slice(start, start + rows))
            f = log_odds(c)
            best = int(np.argmax(f))
            if f[best] > peak:  # the first pair where the log-odds peak, as np.argmax
                peak, peak_cosine = float(f[best]), float(c[best])
            top = max(top, float(c.max()))
        return cls(log_odds, peak_cosine, peak, float(log_odds(np.array([top]))[0]))

    def __call__(self, c: np.ndarray) -> np.ndarray:
        below = c < self.peak_cosine
        return np.where(
            below, self.peak + (self.peak_cosine - c), np.maximum(self.log_odds(c), self.at_top)
        )


@DATA_DETECTORS.register("safeclip")
class SafeCLIP(PairDetector):
    name = "safeclip"
    spec_class = SafeCLIPSpec

    def score(self, pairs: PairEmbeddings) -> np.ndarray:
        if len(pairs) > self.spec.fit_on:
            rng = np.random.default_rng(self.seed)
            sample = np.sort(rng.choice(len(pairs), self.spec.fit_on, replace=False))
            cosines = sampled_cosines(pairs, sample)
        else:
            cosines = pair_cosines(pairs)
        envelope = Envelope.over(pairs, LogOdds.fit(cosines, self.seed))
        return by_rows(len(pairs), lambda rows: envelope(pair_cosines(pairs, rows)))
