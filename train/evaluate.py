"""Classification metrics with the threshold explicit."""

from __future__ import annotations

from collections.abc import Sequence


def binary_metrics(labels: Sequence[int], p_signal: Sequence[float],
                   threshold: float = 0.5) -> dict:
    """Confusion matrix, accuracy, precision, recall, F1 and ROC-AUC of P(signal)."""
    from sklearn.metrics import (accuracy_score, confusion_matrix,
                                 precision_recall_fscore_support, roc_auc_score)

    predicted = [int(p >= threshold) for p in p_signal]
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
    }
