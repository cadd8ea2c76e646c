"""The lexical reference: TF-IDF + a linear model, its settings chosen on the validation
window exactly as an adapter's calibration and threshold are.

A practitioner's first model for "is this article about a merger?" is a bag of words.
Compared against at scikit-learn's defaults (C=1) it is weaker than what that
practitioner would ship, so the product's reference is tuned the way the product is:

1. the training split is cut into the articles before its last ``validation_days``
   (fitted on) and those days (the validation window, never fitted on), the same cut
   :func:`classify.validation.split_off_validation` gives every adapter;
2. every setting of :data:`LEXICAL_GRID` is fitted on the articles before the window;
3. its margin on the window goes through the product's own calibration
   (:func:`classify.calibration.fit_calibration`: Platt scaling, then the F1-optimal
   threshold), so a linear SVM, which has no probabilities, is calibrated the same way
   as logistic regression and as the adapters;
4. the setting with the highest F1 on the window (at that threshold) is the reference;
   ties go to the earlier setting of the grid (the simpler one: fewer n-grams, fewer
   features, less C).

Test windows (April, June, later months) are only ever passed to
:meth:`LexicalModel.p_signal`, after the choice. The fitted model is also the lexical
half of an ensemble version (:mod:`train.ensemble`), so it can be saved beside an
adapter and scored by the serving classifier.

The grid, documented (``LEXICAL_GRID``): ``model`` logistic regression (lbfgs) with
``C`` in 1, 3, 10, 30, 100, or a linear SVM (hinge, ``LinearSVC``) with ``C`` in 0.03,
0.1, 0.3, 1, 3; words 1-grams or 1-2-grams (sublinear tf, always); ``min_df`` 1 or 2;
``class_weight`` none or balanced: 80 fits, ~2-4 minutes on 2 cores for Reuters.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.article import Article
from classify.calibration import Calibration, CalibrationWindow, fit_calibration

log = logging.getLogger(__name__)

LexicalKind = Literal["logreg", "linear-svm"]


@dataclass(frozen=True)
class LexicalParams:
    """One setting of the lexical model."""

    model: LexicalKind
    """``logreg``: logistic regression (lbfgs); ``linear-svm``: ``LinearSVC`` (hinge)."""
    C: float
    """Inverse regularisation strength."""
    ngram_max: int = 2
    """Word n-grams 1..ngram_max."""
    min_df: int = 2
    """Terms in fewer training articles are dropped."""
    class_weight: Literal["balanced"] | None = None
    """``balanced`` re-weights the classes inversely to their frequency."""

    @property
    def label(self) -> str:
        weight = "-balanced" if self.class_weight else ""
        return f"{self.model}-C{self.C:g}-ng{self.ngram_max}-df{self.min_df}{weight}"


def _grid() -> list[LexicalParams]:
    cs: dict[LexicalKind, tuple[float, ...]] = {
        "logreg": (1, 3, 10, 30, 100), "linear-svm": (0.03, 0.1, 0.3, 1, 3)}
    return [LexicalParams(model, c, ngram, min_df, weight)
            for ngram, min_df in itertools.product((1, 2), (1, 2))
            for model in ("logreg", "linear-svm")
            for weight in (None, "balanced")
            for c in cs[model]]


LEXICAL_GRID: list[LexicalParams] = _grid()
"""The settings tried, in tie-breaking order (see the module docstring)."""


def lexical_text(article: Article) -> str:
    """What the lexical model reads of an article: its title and its whole text."""
    return f"{article.title}\n{article.text}"


def _vectorizer(params: LexicalParams):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, params.ngram_max), sublinear_tf=True,
                           min_df=params.min_df)


def _estimator(params: LexicalParams):
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if params.model == "logreg":
        return LogisticRegression(C=params.C, class_weight=params.class_weight, max_iter=5000)
    return LinearSVC(C=params.C, class_weight=params.class_weight, max_iter=20000)


def _sigmoid_all(z) -> list[float]:
    import numpy as np

    return (1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, dtype=float), -30, 30)))).tolist()


@dataclass
class LexicalModel:
    """A fitted vectoriser and linear model, with the calibration and threshold fitted
    on its validation window. :meth:`p_signal` is the calibrated P(signal)."""

    params: LexicalParams
    vectorizer: Any = field(repr=False)
    estimator: Any = field(repr=False)
    calibration: Calibration

    def margin(self, articles: Sequence[Article]) -> list[float]:
        """The linear model's decision value (the log-odds for logistic regression)."""
        features = self.vectorizer.transform([lexical_text(a) for a in articles])
        return [float(v) for v in self.estimator.decision_function(features)]

    def p_signal(self, articles: Sequence[Article]) -> list[float]:
        """Calibrated P(signal): the margin through the model's own Platt scaling."""
        return [self.calibration.apply(p) for p in _sigmoid_all(self.margin(articles))]

    def save(self, path: Path) -> None:
        """One joblib file (scikit-learn's objects pickled): read it only from a
        registry you trust, as you would any model weights."""
        import joblib

        joblib.dump({"params": asdict(self.params), "vectorizer": self.vectorizer,
                     "estimator": self.estimator,
                     "calibration": self.calibration.model_dump(mode="json")}, path)

    @classmethod
    def load(cls, path: Path) -> LexicalModel:
        import joblib

        data = joblib.load(path)
        return cls(LexicalParams(**data["params"]), data["vectorizer"], data["estimator"],
                   Calibration.model_validate(data["calibration"]))


@dataclass
class GridResult:
    params: LexicalParams
    validation_f1: float
    threshold: float


@dataclass
class LexicalSelection:
    """The chosen model and what every setting scored on the validation window."""

    model: LexicalModel
    results: list[GridResult]
    window: CalibrationWindow

    def report(self) -> dict[str, Any]:
        """The grid, the choice and the window, for reports (JSON)."""
        return {"chosen": {**asdict(self.model.params), "label": self.model.params.label},
                "validation_f1": max(r.validation_f1 for r in self.results),
                "threshold": self.model.calibration.threshold,
                "calibration": {"slope": self.model.calibration.slope,
                                "intercept": self.model.calibration.intercept},
                "window": self.window.model_dump(mode="json"),
                "grid": [{"label": r.params.label, "validation_f1": r.validation_f1}
                         for r in self.results]}


def select_lexical(train: Sequence[Article], validation_days: int,
                   grid: Sequence[LexicalParams] = LEXICAL_GRID,
                   dataset: str = "dataset", split: str = "train") -> LexicalSelection:
    """Fit every setting of ``grid`` on ``train`` before its last ``validation_days``
    and keep the one with the best calibrated F1 on those days (see the module
    docstring). Only ``train`` is read."""
    from pipeline.dataset import labelled_sample
    from classify.validation import split_off_validation

    before, window, first, last = split_off_validation(train, validation_days)
    before = [a for a in before if a.signal is not None]
    window = labelled_sample(window)
    y_before = [a.signal for a in before]
    y_window = [a.signal for a in window]
    signals = sum(y_window)
    described = CalibrationWindow(dataset=dataset, split=split, date_from=first, date_to=last,
                                  n=len(window), signals=signals,
                                  base_rate=round(signals / len(window), 6))
    results: list[GridResult] = []
    best: LexicalModel | None = None
    best_f1 = -1.0
    by_features: dict[tuple[int, int], list[LexicalParams]] = {}
    for params in grid:
        by_features.setdefault((params.ngram_max, params.min_df), []).append(params)
    for settings in by_features.values():
        vectorizer = _vectorizer(settings[0])
        x_before = vectorizer.fit_transform([lexical_text(a) for a in before])
        x_window = vectorizer.transform([lexical_text(a) for a in window])
        for params in settings:
            estimator = _estimator(params).fit(x_before, y_before)
            margin = estimator.decision_function(x_window)
            calibration = fit_calibration(y_window, _sigmoid_all(margin), described)
            results.append(GridResult(params, calibration.after.f1, calibration.threshold))
            log.info("lexical %s: validation F1 %.4f", params.label, calibration.after.f1)
            if calibration.after.f1 > best_f1:
                best_f1 = calibration.after.f1
                best = LexicalModel(params, vectorizer, estimator, calibration)
    order = {p: i for i, p in enumerate(grid)}
    results.sort(key=lambda r: order[r.params])
    assert best is not None
    log.info("lexical reference: %s (validation F1 %.4f, threshold %.3f)",
             best.params.label, best_f1, best.calibration.threshold)
    return LexicalSelection(best, results, described)
