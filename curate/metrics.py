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


def url_host(url: str | None) -> str:
    """The host of a document's url ('' when it has none): what length-matched pairs share."""
    from urllib.parse import urlsplit

    return urlsplit(url).netloc.lower() if url else ""


def length_matched_auc(y: np.ndarray, score: np.ndarray, n_chars: np.ndarray, hosts: list[str],
                       quantiles: int = 5) -> float | None:
    """ROC-AUC over the (positive, negative) pairs that share a length quantile (of all documents'
    characters; quintiles by default) and a url host: how well `score` ranks documents that length
    and site cannot tell apart. Ties count half; None when no such pair exists."""
    y = np.asarray(y, dtype=bool)
    edges = np.quantile(n_chars, np.linspace(0, 1, quantiles + 1)[1:-1])
    bin_of = np.searchsorted(edges, n_chars, side="right")
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(bin_of.tolist(), hosts)):
        groups.setdefault(key, []).append(i)
    wins = pairs = 0.0
    for members in groups.values():
        members = np.asarray(members)
        pos, neg = score[members[y[members]]], np.sort(score[members[~y[members]]])
        if len(pos) and len(neg):
            below = np.searchsorted(neg, pos, side="left")
            ties = np.searchsorted(neg, pos, side="right") - below
            wins += float(below.sum() + ties.sum() / 2)
            pairs += len(pos) * len(neg)
    return round(wins / pairs, 4) if pairs else None


def reliability_curve(y: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict]:
    """Reliability-diagram data: documents in `bins` equal-width probability bins, per non-empty bin
    its range, documents, positives, mean predicted probability and observed positive rate."""
    y = np.asarray(y, dtype=bool)
    which = np.minimum((np.asarray(probs) * bins).astype(np.int64), bins - 1)
    out = []
    for k in range(bins):
        members = which == k
        if members.any():
            out.append({"bin": [round(k / bins, 4), round((k + 1) / bins, 4)], "documents": int(members.sum()),
                        "positives": int(y[members].sum()), "mean_predicted": round(float(probs[members].mean()), 4),
                        "observed": round(float(y[members].mean()), 4)})
    return out
