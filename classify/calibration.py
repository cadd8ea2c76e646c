"""Calibrated P(signal) and the adapter's own decision threshold.

An SFT adapter is trained at one signal rate (often 50%, a balanced slice) and served
on windows with another (13-32%), so its raw P(signal) — the softmax over the two label
tokens — ranks articles well but is not a probability of being a signal, and 0.5 is the
wrong cut. Each adapter version therefore carries a :class:`Calibration`, fitted on a
labelled validation window that follows its training data in time and was never
trained on:

- Platt scaling (Platt 1999, with his smoothed targets) on the logit ``z = logit(p_raw)``:
  ``p = sigmoid(slope * z + intercept)``; temperature scaling (Guo et al. 2017,
  arXiv:1706.04599) is the same with ``intercept = 0`` (``slope = 1 / T``).
- the threshold on the calibrated P that maximises F1 on that window;
- the window itself (dataset, split, dates, size, base rate) and the metrics on it
  before and after.

:func:`prior_shift` corrects a calibrated P for a serving window whose signal rate
differs from the fitting window's (Saerens et al. 2002): it is never applied silently;
callers pass the serving rate, known or estimated. :func:`estimate_prior` estimates that
rate from the calibrated P of unlabelled articles (the EM re-estimation of the prior of
Saerens, Latinne and Decaestecker, Neural Computation 2002: it assumes P(article | label)
is the same in both windows, label shift). The label is then cut at the version's own
threshold on the shifted P, the decision Bayes' rule gives for a threshold on the
posterior; :func:`shifted_threshold` is the same cut read on the unshifted P.

This module is pure numbers and types (numpy/scipy, no model), so the serving side,
evaluation, the demo and the experiment can all import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_EPS = 1e-6  # P(signal) is clipped to [eps, 1 - eps] before taking its logit


class CalibrationWindow(BaseModel):
    """The labelled articles a calibration was fitted on."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    """Dataset name (its directory name in the datasets folder)."""

    dataset_path: str | None = None
    """Dataset directory at fitting time (provenance; may not exist elsewhere)."""

    split: str
    """Split of the dataset the window was taken from."""

    date_from: date
    """First publication day of the window (inclusive)."""

    date_to: date
    """Last publication day of the window (inclusive)."""

    n: int = Field(ge=1)
    """Articles the calibration was fitted on (all of the window, or a seeded sample)."""

    signals: int = Field(ge=0)
    """How many of them are signals."""

    base_rate: float = Field(ge=0.0, le=1.0)
    """signals / n: the prior the calibrated P(signal) is calibrated to."""


class WindowMetrics(BaseModel):
    """Quality of P(signal) on the fitting window at one threshold."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(ge=0.0, le=1.0)
    """Threshold the precision/recall/F1 apply to."""

    precision: float
    """Precision at ``threshold``."""

    recall: float
    """Recall at ``threshold``."""

    f1: float
    """F1 at ``threshold``."""

    log_loss: float
    """Mean negative log-likelihood of the labels under P (lower is better)."""

    ece: float
    """Expected calibration error, 10 equal-width bins (lower is better)."""


class Calibration(BaseModel):
    """How one adapter version's raw P(signal) becomes calibrated, and where it is cut.

    Stored under ``"calibration"`` in the adapter's ``manifest.json``; read it through
    :attr:`classify.registry.AdapterVersion.calibration`.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["platt", "temperature"]
    """``platt``: slope and intercept on the logit; ``temperature``: slope only (1/T)."""

    slope: float
    """Multiplies ``logit(p_raw)`` (Platt's a; 1/T for temperature scaling)."""

    intercept: float = 0.0
    """Added to the scaled logit (Platt's b; always 0 for temperature scaling)."""

    threshold: float = Field(ge=0.0, le=1.0)
    """Decision threshold on the calibrated P(signal): the F1-optimal one on the window."""

    fitted_on: CalibrationWindow
    """The labelled window the parameters and the threshold were chosen on."""

    before: WindowMetrics
    """Raw P(signal) on the window at the old fixed threshold 0.5."""

    after: WindowMetrics
    """Calibrated P(signal) on the window at :attr:`threshold`."""

    dtype: str | None = None
    """The dtype of the model whose raw P(signal) this was fitted on (``float32`` in
    process; the vLLM server's when fitted through ``--vllm-url``). The API flags a
    version served in another dtype (``dtype_mismatch`` in ``GET /v1/adapters``): its
    raw P moves (up to ~0.05 between float32 and bfloat16), so the fit may not hold.
    None: not recorded (versions before 2026-12-07, or an unknown vLLM dtype)."""

    def apply(self, p_raw: float, serving_base_rate: float | None = None) -> float:
        """Calibrated P(signal) of one raw P; prior-shifted when a serving rate is given."""
        p = _sigmoid(self.slope * logit(p_raw) + self.intercept)
        if serving_base_rate is not None:
            p = prior_shift(p, self.fitted_on.base_rate, serving_base_rate)
        return p


def logit(p: float) -> float:
    p = min(max(float(p), _EPS), 1.0 - _EPS)
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def prior_shift(p: float, fitted_rate: float, serving_rate: float) -> float:
    """Bayes' adjustment of P(signal) from the fitting window's prior to a serving one.

    The likelihood ratio is unchanged; only the prior odds are swapped:
    ``odds' = odds * [r' / (1 - r')] / [r / (1 - r)]``.
    """
    for name, rate in (("fitted_rate", fitted_rate), ("serving_rate", serving_rate)):
        if not 0.0 < rate < 1.0:
            raise ValueError(f"{name} must be strictly between 0 and 1, got {rate}")
    return _sigmoid(logit(p) + logit(serving_rate) - logit(fitted_rate))


def estimate_prior(p_calibrated: Sequence[float], fitted_rate: float,
                   max_iter: int = 200, tolerance: float = 1e-7) -> float:
    """The signal rate of a window of unlabelled articles, from their calibrated P.

    EM (Saerens et al. 2002): start from the fitting window's rate, shift every P to the
    current estimate (:func:`prior_shift`), take their mean as the next estimate; stop
    when it moves less than ``tolerance``. The fixed point is the maximum-likelihood
    prior under label shift. Returns a rate in (0, 1), clipped to [1e-4, 1 - 1e-4]."""
    import numpy as np

    if not 0.0 < fitted_rate < 1.0:
        raise ValueError(f"fitted_rate must be strictly between 0 and 1, got {fitted_rate}")
    p = np.clip(np.asarray(p_calibrated, dtype=float), _EPS, 1 - _EPS)
    if p.size == 0:
        raise ValueError("cannot estimate a signal rate from no articles")
    z = np.log(p / (1 - p)) - logit(fitted_rate)  # the log likelihood ratio of each
    rate = fitted_rate
    for _ in range(max_iter):
        shifted = 1.0 / (1.0 + np.exp(-(z + logit(rate))))
        new = float(np.clip(shifted.mean(), 1e-4, 1 - 1e-4))
        if abs(new - rate) < tolerance:
            return new
        rate = new
    return rate


def shifted_threshold(threshold: float, fitted_rate: float, serving_rate: float) -> float:
    """The cut on the unshifted calibrated P that gives the same labels as ``threshold``
    on the P shifted from ``fitted_rate`` to ``serving_rate`` (Bayes' rule: the prior
    odds move the cut's odds the other way)."""
    return prior_shift(threshold, serving_rate, fitted_rate)


def fit_logit_scaling(labels: Sequence[int], p_raw: Sequence[float],
                      method: Literal["platt", "temperature"] = "platt") -> tuple[float, float]:
    """``(slope, intercept)`` minimising the log-loss of ``sigmoid(slope*logit(p)+intercept)``.

    Maximum likelihood (L-BFGS with the exact gradient) against Platt's smoothed
    targets, ``(N+ + 1)/(N+ + 2)`` for signals and ``1/(N- + 2)`` for the others: on a
    small window whose scores separate the classes perfectly, plain 0/1 targets send
    the slope to infinity; with thousands of articles the two agree. Temperature
    scaling keeps the intercept at 0.
    """
    import numpy as np
    from scipy.optimize import minimize

    y = np.asarray(labels, dtype=float)
    if len(y) != len(p_raw) or len(y) == 0:
        raise ValueError(f"need as many labels as probabilities, at least one "
                         f"(got {len(y)} labels, {len(p_raw)} probabilities)")
    if not set(np.unique(y)) <= {0.0, 1.0}:
        raise ValueError("labels must be 0 or 1")
    if y.min() == y.max():
        raise ValueError("the calibration window needs both signals and non-signals "
                         f"(all {len(y)} labels are {int(y[0])})")
    positives, negatives = y.sum(), len(y) - y.sum()
    target = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    z = np.log(np.clip(np.asarray(p_raw, dtype=float), _EPS, 1 - _EPS))
    z = z - np.log(np.clip(1 - np.asarray(p_raw, dtype=float), _EPS, 1 - _EPS))

    def loss(params):
        a, b = (params[0], params[1]) if method == "platt" else (params[0], 0.0)
        s = a * z + b
        # cross-entropy log(1 + e^s) - t*s, stable for large |s|
        value = np.mean(np.logaddexp(0.0, s) - target * s)
        residual = 1.0 / (1.0 + np.exp(-s)) - target
        grad = [np.mean(residual * z)] + ([np.mean(residual)] if method == "platt" else [])
        return value, np.asarray(grad)

    start = np.array([1.0, 0.0] if method == "platt" else [1.0])
    result = minimize(loss, start, jac=True, method="L-BFGS-B")
    slope = float(result.x[0])
    intercept = float(result.x[1]) if method == "platt" else 0.0
    return slope, intercept


def f1_optimal_threshold(labels: Sequence[int], p: Sequence[float]) -> tuple[float, float]:
    """``(threshold, f1)``: the cut on ``p`` (label = p >= threshold) with the highest F1.

    Every distinct score is a candidate cut; the threshold returned lies midway between
    the lowest score called a signal and the next lower score, so the same articles are
    called signals but a new article is not decided by a tie with one seen here. Among
    equal F1s the higher threshold (fewer alarms) wins.
    """
    import numpy as np

    y = np.asarray(labels, dtype=int)
    scores = np.asarray(p, dtype=float)
    positives = int(y.sum())
    if positives == 0:
        raise ValueError("F1 is undefined on a window without signals")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], y[order]
    tp = np.cumsum(sorted_labels)
    called = np.arange(1, len(y) + 1)
    # Only the last index of each run of equal scores is a possible cut.
    last_of_run = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    f1 = np.where(last_of_run, 2 * tp / (called + positives), -1.0)
    best = int(np.argmax(f1))  # first maximum = highest threshold among ties
    cut = sorted_scores[best]
    below = sorted_scores[best + 1] if best + 1 < len(y) else 0.0
    return float((cut + below) / 2), float(f1[best])


def window_metrics(labels: Sequence[int], p: Sequence[float], threshold: float) -> WindowMetrics:
    import numpy as np

    y = np.asarray(labels, dtype=int)
    q = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    called = q >= threshold
    tp = int((called & (y == 1)).sum())
    precision = tp / int(called.sum()) if called.any() else 0.0
    recall = tp / int(y.sum()) if y.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    log_loss = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    return WindowMetrics(threshold=round(threshold, 6), precision=round(precision, 4),
                         recall=round(recall, 4), f1=round(f1, 4),
                         log_loss=round(log_loss, 4),
                         ece=round(expected_calibration_error(y, q), 4))


def expected_calibration_error(labels: Sequence[int], p_signal: Sequence[float],
                               bins: int = 10) -> float:
    """ECE: the bin-weighted gap between mean P(signal) and the signal rate (equal-width bins)."""
    import numpy as np

    y, p = np.asarray(labels, dtype=float), np.asarray(p_signal, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.mean() * abs(p[inside].mean() - y[inside].mean())
    return float(gap)


def fit_calibration(labels: Sequence[int], p_raw: Sequence[float], window: CalibrationWindow,
                    method: Literal["platt", "temperature"] = "platt",
                    dtype: str | None = None) -> Calibration:
    """Fit the logit scaling and the F1-optimal threshold on one labelled window
    (``dtype``: that of the model that computed ``p_raw``, recorded)."""
    labels = [int(v) for v in labels]
    slope, intercept = fit_logit_scaling(labels, p_raw, method)
    unfitted = Calibration(  # to apply the parameters before the threshold is known
        method=method, slope=slope, intercept=intercept, threshold=0.5, fitted_on=window,
        before=window_metrics(labels, p_raw, 0.5), after=window_metrics(labels, p_raw, 0.5),
        dtype=dtype)
    calibrated = [unfitted.apply(p) for p in p_raw]
    threshold, _ = f1_optimal_threshold(labels, calibrated)
    return unfitted.model_copy(update={
        "threshold": threshold, "after": window_metrics(labels, calibrated, threshold)})


class EnsembleSpec(BaseModel):
    """How an ensemble version combines its adapter with a lexical model.

    ``P(signal) = sigmoid(adapter_weight * logit(p_raw) + lexical_weight * margin +
    intercept)``: logistic regression on the adapter's raw two-token logit and the lexical
    model's margin (stacking), fitted on the validation window both halves never trained
    on, so the combined P is calibrated to that window's signal rate. Stored under
    ``"ensemble"`` in the version's manifest; the lexical model lies beside the adapter
    files (``lexical_file``)."""

    model_config = ConfigDict(extra="forbid")

    lexical_file: str = "lexical.joblib"
    """The fitted lexical model in the version's directory (:class:`classify.lexical.LexicalModel`)."""

    lexical: str
    """The lexical model's setting (:attr:`classify.lexical.LexicalParams.label`)."""

    adapter_weight: float
    """Weight of ``logit(p_raw)`` of the adapter."""

    lexical_weight: float
    """Weight of the lexical model's margin."""

    intercept: float
    """Added to the weighted sum."""

    threshold: float = Field(ge=0.0, le=1.0)
    """Decision threshold on the combined P: the F1-optimal one on the window."""

    fitted_on: CalibrationWindow
    """The labelled window the weights and the threshold were chosen on."""

    after: WindowMetrics
    """The combined P on the window at :attr:`threshold`."""

    adapter_alone: WindowMetrics
    """The adapter's own calibrated P on the window at its own threshold."""

    lexical_alone: WindowMetrics
    """The lexical model's calibrated P on the window at its own threshold."""

    def combine(self, p_raw: float, lexical_margin: float) -> float:
        """The combined P(signal) of one article."""
        return _sigmoid(self.adapter_weight * logit(p_raw)
                        + self.lexical_weight * float(lexical_margin) + self.intercept)


def fit_ensemble(labels: Sequence[int], p_raw: Sequence[float],
                 lexical_margin: Sequence[float], window: CalibrationWindow,
                 lexical: str, adapter_alone: WindowMetrics,
                 lexical_alone: WindowMetrics) -> EnsembleSpec:
    """Stack an adapter's raw logit and a lexical margin on one labelled window: the
    weights by (nearly unregularised) logistic regression, then the F1-optimal cut."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    y = np.asarray([int(v) for v in labels])
    if len(y) != len(p_raw) or len(y) != len(lexical_margin) or len(set(y.tolist())) != 2:
        raise ValueError("need one adapter P and one lexical margin per label, and both "
                         "signals and non-signals")
    x = np.column_stack([[logit(p) for p in p_raw], np.asarray(lexical_margin, dtype=float)])
    model = LogisticRegression(C=1e4, max_iter=5000).fit(x, y)
    (a, b), c = model.coef_[0], model.intercept_[0]
    spec = EnsembleSpec(lexical=lexical, adapter_weight=float(a), lexical_weight=float(b),
                        intercept=float(c), threshold=0.5, fitted_on=window,
                        after=adapter_alone, adapter_alone=adapter_alone,
                        lexical_alone=lexical_alone)
    combined = [spec.combine(p, m) for p, m in zip(p_raw, lexical_margin)]
    threshold, _ = f1_optimal_threshold(y.tolist(), combined)
    return spec.model_copy(update={
        "threshold": threshold, "after": window_metrics(y.tolist(), combined, threshold)})
