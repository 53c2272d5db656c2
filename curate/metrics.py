"""Agreement metrics, one implementation for training, label evaluation and the report."""

from __future__ import annotations

import numpy as np


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC-AUC by the rank-sum (Mann-Whitney) formula, ties averaged; None when one class is absent."""
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    score = np.asarray(score, dtype=np.float64)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based average rank of each distinct score
    return float((mean_rank[inverse][y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y: np.ndarray, score: np.ndarray) -> float | None:
    """PR-AUC as average precision (precision at each positive, ranked by score); None without positives."""
    y = np.asarray(y, dtype=bool)
    if not y.any():
        return None
    ranked = y[np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")]
    precision_at = np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
    return float(precision_at[ranked].mean())


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float | np.ndarray) -> dict:
    """Precision, recall and F1 of `score >= threshold` against boolean `y`."""
    pred = score >= threshold
    tp = int((pred & y).sum())
    precision = tp / int(pred.sum()) if pred.any() else 0.0
    recall = tp / int(y.sum()) if y.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def best_f1_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The threshold among the observed scores that maximizes F1 (0.5 when there are no positives)."""
    if not y.any():
        return 0.5
    candidates = np.unique(score)
    return float(max(candidates, key=lambda t: (binary_metrics(y, score, t)["f1"], -t)))


def cross_validated_metrics(y: np.ndarray, score: np.ndarray, fold: np.ndarray) -> dict:
    """ROC-AUC, PR-AUC, and precision/recall/F1 where each fold is cut at the F1-best threshold of
    the other folds (so the F1 is not tuned on the documents it is measured on)."""
    thresholds = np.empty(len(y))
    for f in np.unique(fold):
        thresholds[fold == f] = best_f1_threshold(y[fold != f], score[fold != f])
    auc, ap = roc_auc(y, score), average_precision(y, score)
    return {"roc_auc": None if auc is None else round(auc, 4), "pr_auc": None if ap is None else round(ap, 4),
            **binary_metrics(y, score, thresholds)}


