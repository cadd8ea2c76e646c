"""Offline evaluation: the base model or an adapter on a dataset split.

P(signal) comes from the product's own classifier (:class:`classify.classifier.SignalClassifier`
on the in-process transformers + peft backend, or on a running vLLM server), so an
evaluation measures exactly what serving would answer: the calibrated P(signal) of a
calibrated adapter version, cut at its own threshold (chosen on its validation window)
unless one is given. Reported, with the threshold explicit: the confusion matrix,
accuracy, precision, recall, F1, ROC-AUC, the expected calibration error, and
``best_f1`` (the best F1 any threshold
reaches on the evaluated articles: a bound to read F1 against, never tuned on); and a
per-month table, because a model's quality is expected to decay with the time since
its training window. The honest reference is :class:`TunedLexical`: TF-IDF + a linear
model with its settings chosen on the validation window (:mod:`classify.lexical`), what a
practitioner would ship; :class:`TfidfBaseline` is the same features at scikit-learn's
defaults (C=1), kept as the untuned row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.article import Article
from pipeline.prompt import BASE_NAME
from pipeline.stats import publication_month
from classify.calibration import expected_calibration_error, f1_optimal_threshold
from classify.lexical import LEXICAL_GRID, LexicalParams, lexical_text, select_lexical

if TYPE_CHECKING:
    from classify.classifier import Classification

log = logging.getLogger(__name__)


def labels_at(p_signal: Sequence[float], threshold: float) -> list[int]:
    """The labels a threshold gives (1: P(signal) at or above it), as the API labels."""
    return [int(p >= threshold) for p in p_signal]


def binary_metrics(labels: Sequence[int], p_signal: Sequence[float],
                   threshold: float = 0.5) -> dict[str, Any]:
    """Confusion matrix, accuracy, precision, recall, F1, ROC-AUC and ECE of P(signal)."""
    from sklearn.metrics import (accuracy_score, confusion_matrix,
                                 precision_recall_fscore_support, roc_auc_score)

    predicted = labels_at(p_signal, threshold)
    (tn, fp), (fn, tp) = confusion_matrix(labels, predicted, labels=[0, 1])
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="binary", zero_division=0)
    auc = roc_auc_score(labels, p_signal) if len(set(labels)) == 2 else None
    return {
        "n": len(labels), "threshold": threshold,
        "tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn),
        "accuracy": round(float(accuracy_score(labels, predicted)), 4),
        "precision": round(float(precision), 4), "recall": round(float(recall), 4),
        "f1": round(float(f1), 4), "roc_auc": None if auc is None else round(float(auc), 4),
        "ece": round(expected_calibration_error(labels, p_signal), 4),
        # The best F1 any threshold reaches on these very articles: an upper bound for
        # reading the one above, never a threshold to serve (that is chosen on validation).
        "best_f1": None if not any(labels) else round(f1_optimal_threshold(labels, p_signal)[1], 4),
    }


def f1_difference(labels: Sequence[int], predicted_a: Sequence[int],
                  predicted_b: Sequence[int], resamples: int = 2000,
                  seed: int = 0) -> dict[str, Any]:
    """F1 of prediction a minus F1 of prediction b on the same articles, with a 95%
    paired bootstrap interval (scipy's ``bootstrap``, articles drawn with replacement,
    both F1s recomputed on each draw) and how often a draw finds a no better than b.

    Whether a gap between two models on one window is more than the luck of which
    articles the window holds."""
    import numpy as np
    from scipy.stats import bootstrap

    y, a, b = (np.asarray(v, dtype=np.int8) for v in (labels, predicted_a, predicted_b))

    def f1(y, p, axis=-1):
        tp = np.sum((y == 1) & (p == 1), axis=axis)
        wrong = np.sum(y != p, axis=axis)
        return np.where(2 * tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)

    def gap(y, a, b, axis=-1):
        return f1(y, a, axis) - f1(y, b, axis)

    result = bootstrap((y, a, b), gap, paired=True, vectorized=True, n_resamples=resamples,
                       method="percentile", random_state=np.random.default_rng(seed))
    draws = result.bootstrap_distribution
    return {"difference": round(float(gap(y, a, b)), 4),
            "low": round(float(result.confidence_interval.low), 4),
            "high": round(float(result.confidence_interval.high), 4),
            "share_not_better": round(float(np.mean(draws <= 0)), 4),
            "resamples": resamples}


def per_month(articles: Sequence[Article], p_signal: Sequence[float],
              threshold: float) -> dict[str, dict[str, Any]]:
    """:func:`binary_metrics` for each calendar month of publication."""
    groups: dict[str, list[int]] = {}
    for i, article in enumerate(articles):
        groups.setdefault(publication_month(article), []).append(i)
    return {month: binary_metrics([articles[i].signal for i in idx],
                                  [p_signal[i] for i in idx], threshold)
            for month, idx in sorted(groups.items())}


@dataclass
class Evaluation:
    """One model on one set of articles."""

    model: str
    split: str
    metrics: dict[str, Any]
    by_month: dict[str, dict[str, Any]]
    p_signal: list[float] = field(repr=False)
    labels: list[int] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "split": self.split, "metrics": self.metrics,
                "by_month": self.by_month}

    @property
    def predicted(self) -> list[int]:
        """The labels at the threshold its metrics applied."""
        return labels_at(self.p_signal, self.metrics["threshold"])


class Scorer:
    """The serving classifier, loaded once for many evaluations: on the in-process
    backend (transformers + peft), or on a running vLLM server (``vllm_url``: the
    serving path: 2.4x the in-process rate on a 2-core CPU, ``bench/RESULTS.md``), which then hot-loads the
    adapters it is asked for, as the classification API does."""

    def __init__(self, base_model: Path, registry: Path, max_prompt_tokens: int,
                 batch_size: int | None = None, vllm_url: str | None = None,
                 vllm_served_name: str = BASE_NAME, vllm_api_key: str | None = None):
        from transformers import AutoTokenizer

        from pipeline.prompt import label_token_ids
        from classify.backends import InProcessBackend, VLLMEndpoint
        from classify.classifier import SignalClassifier
        from classify.registry import AdapterRegistry

        tokenizer = AutoTokenizer.from_pretrained(base_model)
        labels = label_token_ids(tokenizer)
        if vllm_url:
            backend = VLLMEndpoint(vllm_url, vllm_served_name, vllm_api_key).backend(labels)
        else:
            backend = InProcessBackend(base_model, labels, batch_size=batch_size)
        self.classifier = SignalClassifier(backend, tokenizer, AdapterRegistry(registry),
                                           max_prompt_tokens, threshold=0.5, max_loaded=64)
        # One event loop for every call: the vLLM backend's HTTP connections belong to
        # the loop that opened them.
        self._runner = asyncio.Runner()

    def classify(self, articles: Sequence[Article], adapter: str | None,
                 threshold: float | None = None, chunk: int = 32) -> list[Classification]:
        """What the API answers for ``articles``: calibrated P and the applied threshold."""
        from tqdm import tqdm

        name = None if adapter in (None, BASE_NAME) else adapter
        out: list[Classification] = []
        with tqdm(total=len(articles), desc=f"scoring with {adapter or BASE_NAME}",
                  unit="article") as bar:
            for start in range(0, len(articles), chunk):
                batch = list(articles[start:start + chunk])
                out.extend(self._runner.run(
                    self.classifier.classify(batch, name, threshold)))
                bar.update(len(batch))
        return out

    def close(self) -> None:
        """Close the backend's connections and the event loop."""
        self._runner.run(self.classifier.backend.close())
        self._runner.close()

    def p_signal(self, articles: Sequence[Article], adapter: str | None,
                 chunk: int = 32) -> list[float]:
        return [c.p_signal for c in self.classify(articles, adapter, chunk=chunk)]

    def evaluate(self, articles: Sequence[Article], adapter: str | None, split: str,
                 threshold: float | None = None,
                 signal_rate: float | str | None = None) -> Evaluation:
        """Metrics at the threshold serving applies: ``threshold`` if given, else the
        adapter version's own (calibrated versions), else 0.5.

        ``signal_rate``: label shift, as the API applies it (only when asked; never
        silently): prior-shift the calibrated P to this signal rate of the evaluated
        window, or with ``"estimate"`` to the rate EM estimates from the whole window's
        calibrated P (:func:`classify.calibration.estimate_prior`), its labels unread.
        """
        from classify.calibration import estimate_prior, prior_shift

        results = self.classify(articles, adapter, threshold)
        p = [c.p_signal for c in results]
        applied = results[0].threshold if results else (0.5 if threshold is None else threshold)
        rate = None
        if signal_rate is not None:
            version = self.classifier.resolve(adapter)
            if version is None or not (results and results[0].calibrated):
                raise ValueError(f"{adapter or BASE_NAME} has no calibration to prior-shift")
            fitted = self.classifier.fitted_rate(version)
            rate = estimate_prior(p, fitted) if signal_rate == "estimate" else float(signal_rate)
            p = [prior_shift(v, fitted, rate) for v in p]
        labels = [a.signal for a in articles]
        metrics = {**binary_metrics(labels, p, applied), "calibrated": bool(
            results and results[0].calibrated), "signal_rate": signal_rate,
            "estimated_signal_rate": None if rate is None else round(rate, 4),
            "backend": self.classifier.backend.name}
        return Evaluation(model=adapter or BASE_NAME, split=split, metrics=metrics,
                          by_month=per_month(articles, p, applied), p_signal=p, labels=labels)


def tfidf_model(train: Sequence[Article]):
    """TF-IDF (uni+bigram, sublinear tf) + logistic regression fitted on the labelled
    articles of ``train``; ``tfidf_p_signal`` scores articles with it."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    labelled = [a for a in train if a.signal is not None]
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
                          LogisticRegression(max_iter=2000))
    return model.fit([lexical_text(a) for a in labelled], [a.signal for a in labelled])


def tfidf_p_signal(model, articles: Sequence[Article]) -> list[float]:
    """P(signal) of ``articles`` under a :func:`tfidf_model`."""
    return model.predict_proba([lexical_text(a) for a in articles])[:, 1].tolist()


def tfidf_baseline(train: Sequence[Article], test: Sequence[Article], split: str,
                   threshold: float = 0.5) -> Evaluation:
    """TF-IDF + logistic regression (:func:`tfidf_model`) trained on ``train``."""
    return TfidfBaseline(train, threshold=threshold).evaluate(test, split)


class TfidfBaseline:
    """TF-IDF + LR (:func:`tfidf_model`), fitted once, for evaluating many windows.

    Without ``validation_days``: trained on all of ``train``, cut at ``threshold``
    (``tfidf-logreg``). With it, under the adapters' own protocol: trained on ``train``
    minus its last ``validation_days`` and cut at the F1-optimal threshold of those days,
    the window each adapter's calibration and threshold are fitted on
    (``tfidf-logreg-validated``, the fairest baseline)."""

    def __init__(self, train: Sequence[Article], validation_days: int | None = None,
                 threshold: float = 0.5):
        self.name, self.threshold = "tfidf-logreg", threshold
        if validation_days is None:
            self.model = tfidf_model(train)
            return
        from pipeline.dataset import labelled_sample
        from classify.validation import split_off_validation

        before, window, _, _ = split_off_validation(train, validation_days)
        window = labelled_sample(window)  # its labelled articles, all of them
        self.name, self.model = "tfidf-logreg-validated", tfidf_model(before)
        self.threshold, _ = f1_optimal_threshold([a.signal for a in window],
                                                 tfidf_p_signal(self.model, window))

    def evaluate(self, test: Sequence[Article], split: str) -> Evaluation:
        p = tfidf_p_signal(self.model, test)
        labels = [a.signal for a in test]
        return Evaluation(model=self.name, split=split,
                          metrics=binary_metrics(labels, p, self.threshold),
                          by_month=per_month(test, p, self.threshold), p_signal=p,
                          labels=labels)


class TunedLexical:
    """The tuned lexical reference (``tfidf-tuned``) as an evaluation row: chosen on
    the training split's validation window by :func:`select_lexical`, cut at its own
    threshold there."""

    name = "tfidf-tuned"

    def __init__(self, train: Sequence[Article], validation_days: int,
                 grid: Sequence[LexicalParams] = LEXICAL_GRID, dataset: str = "dataset"):
        self.selection = select_lexical(train, validation_days, grid, dataset)
        self.model = self.selection.model
        self.threshold = self.model.calibration.threshold

    def evaluate(self, test: Sequence[Article], split: str) -> Evaluation:
        p = self.model.p_signal(test)
        labels = [a.signal for a in test]
        return Evaluation(model=self.name, split=split,
                          metrics={**binary_metrics(labels, p, self.threshold),
                                   "calibrated": True, "params": self.model.params.label},
                          by_month=per_month(test, p, self.threshold), p_signal=p,
                          labels=labels)
