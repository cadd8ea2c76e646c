"""Calibration maths on scores drawn from known models (no model needed)."""

import math

import numpy as np
import pytest

from classify.calibration import (Calibration, CalibrationWindow, f1_optimal_threshold,
                               fit_calibration, fit_logit_scaling, logit, prior_shift)
from classify.registry import AdapterManifest, InvalidManifest


def _window(n=1, signals=0):
    return CalibrationWindow(dataset="synthetic", split="train", date_from="1987-03-27",
                             date_to="1987-03-31", n=n, signals=signals,
                             base_rate=signals / n)


def _draw(slope, intercept, n, seed):
    """Raw scores whose true P(signal) is sigmoid(slope * logit(p_raw) + intercept)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    p_raw = 1 / (1 + np.exp(-z))
    p_true = 1 / (1 + np.exp(-(slope * z + intercept)))
    labels = (rng.random(n) < p_true).astype(int)
    return labels, p_raw


@pytest.mark.parametrize("slope,intercept", [(0.6, -1.5), (1.8, 0.7), (1.0, -2.5)])
def test_platt_recovers_known_parameters(slope, intercept):
    labels, p_raw = _draw(slope, intercept, 40_000, seed=1)
    a, b = fit_logit_scaling(labels, p_raw, "platt")
    assert a == pytest.approx(slope, abs=0.05)
    assert b == pytest.approx(intercept, abs=0.05)


def test_temperature_recovers_known_temperature_and_keeps_intercept_zero():
    labels, p_raw = _draw(0.5, 0.0, 40_000, seed=2)  # T = 2
    a, b = fit_logit_scaling(labels, p_raw, "temperature")
    assert 1 / a == pytest.approx(2.0, abs=0.1) and b == 0.0


def test_already_calibrated_scores_fit_identity():
    labels, p_raw = _draw(1.0, 0.0, 40_000, seed=3)
    a, b = fit_logit_scaling(labels, p_raw)
    assert (a, b) == (pytest.approx(1.0, abs=0.04), pytest.approx(0.0, abs=0.04))


def test_threshold_maximises_f1_on_the_window():
    labels, p_raw = _draw(1.3, -1.2, 3_000, seed=4)
    threshold, best = f1_optimal_threshold(labels, p_raw)

    def f1_at(t):
        called = p_raw >= t
        tp = int((called & (labels == 1)).sum())
        return 2 * tp / (called.sum() + labels.sum())

    brute = max(f1_at(t) for t in np.unique(p_raw))
    assert best == pytest.approx(brute, abs=1e-12)
    assert f1_at(threshold) == pytest.approx(brute, abs=1e-12)
    # strictly between two observed scores: the same articles are called signals
    assert threshold not in set(p_raw.tolist())


def test_threshold_on_a_tiny_window_by_hand():
    # scores 0.9 (1), 0.8 (0), 0.7 (1), 0.2 (0): cutting below 0.7 gives F1 0.8
    threshold, f1 = f1_optimal_threshold([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.2])
    assert f1 == pytest.approx(0.8) and threshold == pytest.approx(0.45)


def test_fit_calibration_records_window_threshold_and_improves_log_loss():
    labels, p_raw = _draw(0.7, -1.6, 5_000, seed=5)
    window = _window(len(labels), int(labels.sum()))
    calibration = fit_calibration(labels, p_raw, window)
    calibrated = [calibration.apply(p) for p in p_raw]
    assert calibration.threshold == pytest.approx(f1_optimal_threshold(labels, calibrated)[0])
    assert calibration.after.log_loss < calibration.before.log_loss
    assert calibration.after.ece < calibration.before.ece
    assert calibration.after.f1 >= calibration.before.f1
    # mean calibrated P matches the window's base rate (a property of the logistic MLE)
    assert np.mean(calibrated) == pytest.approx(window.base_rate, abs=0.005)
    # round trip through the manifest's JSON
    again = Calibration.model_validate_json(calibration.model_dump_json())
    assert again == calibration


def test_perfectly_separated_small_window_gives_finite_parameters():
    labels = [1, 1, 1, 0, 0, 0, 0, 0]
    p_raw = [0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1, 0.05]
    a, b = fit_logit_scaling(labels, p_raw)
    assert 0 < a < 20 and abs(b) < 20
    threshold, f1 = f1_optimal_threshold(labels, p_raw)
    assert f1 == 1.0 and 0.4 < threshold < 0.7


def test_window_without_both_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="both signals and non-signals"):
        fit_logit_scaling([0, 0, 0], [0.1, 0.5, 0.9])


def test_prior_shift_is_bayes_on_the_odds():
    p = 0.3
    shifted = prior_shift(p, fitted_rate=0.2, serving_rate=0.5)
    odds = p / (1 - p) * (0.5 / 0.5) / (0.2 / 0.8)
    assert shifted == pytest.approx(odds / (1 + odds))
    assert prior_shift(p, 0.17, 0.17) == pytest.approx(p)
    with pytest.raises(ValueError, match="serving_rate"):
        prior_shift(p, 0.2, 1.0)
    calibration = fit_calibration(*_draw(1.0, -1.0, 2_000, seed=6),
                                  window=_window(10, 2))
    plain = calibration.apply(0.4)
    assert calibration.apply(0.4, serving_base_rate=0.2) == pytest.approx(plain)  # same rate
    assert calibration.apply(0.4, serving_base_rate=0.4) > plain


def test_manifest_accessor(tmp_path):
    calibration = fit_calibration(*_draw(1.0, -1.0, 500, seed=7), window=_window(10, 2))
    with_field = AdapterManifest.parse({"calibration": calibration.model_dump(mode="json")}, "a")
    assert with_field.calibration == calibration
    assert with_field.to_json()["calibration"] == calibration.model_dump(mode="json")
    # given as an object (as training does), it is still written whole
    assert AdapterManifest(calibration=calibration).to_json()["calibration"] == (
        calibration.model_dump(mode="json"))
    assert AdapterManifest.parse({"method": "lora"}, "old").calibration is None
    with pytest.raises(InvalidManifest, match="adapter bad: manifest field 'calibration.method'"):
        AdapterManifest.parse({"calibration": {"method": "isotonic"}}, "bad")


def test_logit_is_clipped():
    assert math.isfinite(logit(0.0)) and math.isfinite(logit(1.0))
