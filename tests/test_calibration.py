"""The calibrated verdict keeps its stated false-alarm rate on clean draws and still sees a
planted outlier."""

import numpy as np
import pytest

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.scanning.calibration import calibrate, logit_rate


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_a_stated_false_alarm_rate_holds_on_a_synthetic_null(alpha):
    """A clean model's K class scores are draws of one distribution (here normal, spread 1.5
    logits). The scan takes the largest as its suspect and six others as controls; over 4,000
    seeded clean models the share flagged stays under alpha (Bonferroni makes it conservative),
    and a target planted 8 spreads above the rest is flagged nearly always."""
    rng = np.random.default_rng(0)
    classes, trials, controls = 100, 4000, 6
    flagged = planted = 0
    for _ in range(trials):
        scores = rng.normal(-3.0, 1.5, classes)
        order = np.argsort(scores)[::-1]
        picks = rng.choice(order[1:], size=controls, replace=False)
        result = calibrate(scores[order[0]], list(scores[picks]), classes, alpha)
        flagged += result.statistic > result.threshold
        backdoor = calibrate(scores.max() + 12.0, list(scores[picks]), classes, alpha)
        planted += backdoor.statistic > backdoor.threshold
    assert flagged / trials <= alpha
    assert planted / trials >= 0.9


def test_rates_of_zero_and_one_stay_finite_and_bad_settings_are_one_line():
    assert np.isfinite(logit_rate(0, 64)) and np.isfinite(logit_rate(64, 64))
    assert logit_rate(64, 64) > 0 > logit_rate(0, 64)
    with pytest.raises(ConfigError, match="at least 2 control classes"):
        calibrate(1.0, [0.0], 10, 0.01)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        calibrate(1.0, [0.0, 0.1], 10, 1.5)
