"""Classification metrics computed from labels and predictions (no scikit-learn needed)."""

from __future__ import annotations

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of predictions equal to the labels; both (N,) integers."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """F1 averaged over classes with equal weight (scikit-learn's ``average="macro"``).

    Per class F1 = 2 TP / (2 TP + FP + FN); classes that occur neither in the labels nor in
    the predictions are left out of the average, and a class predicted but never present
    (or present but never predicted) counts with F1 = 0, as in scikit-learn.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.size == 0:
        return float("nan")
    k = int(num_classes or max(y_true.max(), y_pred.max()) + 1)
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    seen = (cm.sum(0) + cm.sum(1)) > 0
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[seen].mean())
