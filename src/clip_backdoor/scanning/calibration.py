"""A verdict at a stated false-alarm rate, from a null the scan builds itself.

A class-wise scanner measures, for each class it searches, how easily clean images are sent
there (``patch_search``: the share a small optimised patch sends). A clean model's classes are
draws from one distribution; a backdoor's target is an outlier far above it. The scan searches a
few seeded *control* classes besides its suspect: their scores are the null. The suspect is
judged by the prediction interval of a Gaussian fitted to the controls (Student's t with n - 1
degrees of freedom, so few controls widen it instead of over-trusting their spread), with a
Bonferroni factor for the classes the suspect was picked from: on a clean model the chance that
the most suspicious of K classes passes is then at most ``alpha``.

With a clean reference (the public base), each class's score is the model's minus the
reference's for that class: a class every CLIP of that architecture finds easy is no evidence,
and the null is the controls' differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from clip_backdoor.core.errors import ConfigError

MIN_SPREAD = 0.25  # logit units: controls that agree to the second decimal are not a null
# that makes every small difference significant (measured rates are shares of a few dozen images)


def logit_rate(hits: int, total: int) -> float:
    """The logit of a measured share, with half a hit added each side so 0 and 1 stay finite."""
    share = (hits + 0.5) / (total + 1.0)
    return math.log(share / (1.0 - share))


@dataclass
class Calibrated:
    statistic: float  # the suspect's standardised distance above the null
    threshold: float  # the statistic a clean model passes with probability alpha
    p_value: float  # Bonferroni-corrected over the classes
    null_mean: float
    null_spread: float

    def summary(self) -> dict:
        return {k: round(float(v), 6) for k, v in self.__dict__.items()}


def calibrate(suspect: float, controls: list[float], classes: int, alpha: float) -> Calibrated:
    """The suspect's score against the controls' (each a logit rate, or a difference of two)."""
    if len(controls) < 2:
        raise ConfigError("a calibrated verdict needs at least 2 control classes")
    if not 0 < alpha < 1:
        raise ConfigError(f"false-alarm rate {alpha} is not between 0 and 1")
    values = np.asarray(controls, dtype=float)
    n = len(values)
    spread = max(float(values.std(ddof=1)), MIN_SPREAD)
    scale = spread * math.sqrt(1.0 + 1.0 / n)  # a new draw's prediction interval
    statistic = (suspect - float(values.mean())) / scale
    tail = float(stats.t.sf(statistic, df=n - 1))
    p_value = min(1.0, tail * max(classes, 1))
    threshold = float(stats.t.isf(alpha / max(classes, 1), df=n - 1))
    return Calibrated(statistic, threshold, p_value, float(values.mean()), spread)
