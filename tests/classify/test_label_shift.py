"""Label shift: the EM estimate of a window's signal rate, Bayes' threshold, stacking."""

import math

import numpy as np
import pytest

from classify.calibration import (CalibrationWindow, EnsembleSpec, estimate_prior,
                               fit_ensemble, prior_shift, shifted_threshold, window_metrics)


def _calibrated_scores(rate: float, n: int, fitted_rate: float, separation: float,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn at ``rate`` and their exactly calibrated P at ``fitted_rate``:
    x | y ~ N(+-separation/2, 1), so the log-likelihood ratio is separation * x."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    x = rng.normal(np.where(y == 1, separation / 2, -separation / 2), 1.0)
    log_odds = separation * x + math.log(fitted_rate / (1 - fitted_rate))
    return y, 1 / (1 + np.exp(-log_odds))


@pytest.mark.parametrize("true_rate", [0.08, 0.28, 0.45])
def test_em_recovers_a_known_shifted_prior_within_0_02(true_rate):
    y, p = _calibrated_scores(true_rate, 2_000, fitted_rate=0.17, separation=2.5, seed=3)
    estimate = estimate_prior(p.tolist(), fitted_rate=0.17)
    assert abs(estimate - y.mean()) < 0.02, (estimate, y.mean())
    assert abs(estimate - true_rate) < 0.03
    # the naive mean of the unshifted P is pulled towards the fitting rate
    assert abs(p.mean() - true_rate) > abs(estimate - true_rate)


def test_em_at_the_fitting_rate_stays_there():
    y, p = _calibrated_scores(0.17, 2_000, fitted_rate=0.17, separation=2.5, seed=4)
    assert estimate_prior(p.tolist(), 0.17) == pytest.approx(y.mean(), abs=0.02)
    with pytest.raises(ValueError, match="no articles"):
        estimate_prior([], 0.17)
    with pytest.raises(ValueError, match="fitted_rate"):
        estimate_prior([0.5], 1.0)


def test_the_adjusted_threshold_is_bayes_rule():
    """A cut t on the P shifted from r to r' labels exactly the articles whose
    unshifted P is at or above the cut whose odds are t's odds times the prior odds
    ratio (r / (1-r)) / (r' / (1-r'))."""
    t, r, r_new = 0.6, 0.18, 0.30
    odds = t / (1 - t) * (r / (1 - r)) / (r_new / (1 - r_new))
    assert shifted_threshold(t, r, r_new) == pytest.approx(odds / (1 + odds))
    rng = np.random.default_rng(0)
    for p in rng.random(2_000):
        assert (prior_shift(p, r, r_new) >= t) == (p >= shifted_threshold(t, r, r_new) - 1e-12)
    assert shifted_threshold(t, r, r) == pytest.approx(t)


def _window(n: int, signals: int) -> CalibrationWindow:
    return CalibrationWindow(dataset="d", split="train", date_from="1987-03-27",
                             date_to="1987-03-31", n=n, signals=signals,
                             base_rate=signals / n)


def test_stacking_two_complementary_scores_beats_each_alone():
    """Two noisy views of the same label: the fitted combination weighs both, its
    threshold is F1-optimal on the window, and its F1 there is above either alone."""
    rng = np.random.default_rng(1)
    y = (rng.random(3_000) < 0.2).astype(int)
    a = rng.normal(np.where(y == 1, 1.2, -1.2), 1.0)  # the adapter's logit
    b = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)  # the lexical margin
    p_raw = 1 / (1 + np.exp(-a))
    alone = window_metrics(y.tolist(), p_raw.tolist(), 0.5)
    spec = fit_ensemble(y.tolist(), p_raw.tolist(), b.tolist(), _window(3_000, int(y.sum())),
                        "logreg-test", alone, alone)
    assert spec.adapter_weight > 0.5 and spec.lexical_weight > 0.5
    combined = [spec.combine(p, m) for p, m in zip(p_raw, b)]
    from classify.calibration import f1_optimal_threshold

    for score in (a, b):
        assert spec.after.f1 > f1_optimal_threshold(y.tolist(), score.tolist())[1]
    assert spec.after == window_metrics(y.tolist(), combined, spec.threshold)
    # the spec round-trips through the manifest's JSON
    assert EnsembleSpec.model_validate(spec.model_dump(mode="json")) == spec
