"""Distil behavior labels into one multi-label fastText classifier, evaluated by cross-validation.

The recipe (chosen by `benchmarks/classifier_experiments.py`, see `classifiers/README.md`):
- one fastText model scores all four behaviors (one-vs-all loss: an independent sigmoid per label);
- text normalization that keeps LaTeX commands and math symbols as tokens (`curate.views`);
- a behavior is a local event in a long page, so the model is trained on windows of a few dozen
  words, labeled positive where the labeler's evidence quote for an instance lies (documents
  without usable evidence are trained on whole), and a document's probability aggregates its
  non-overlapping windows (noisy-or by default);
- optionally a tiny logistic regression per behavior on [logit of that probability, log length],
  fitted on out-of-fold predictions, so a probability means the same for short and long pages.

Evaluation is k-fold cross-validation by document: every metric in the card comes from
out-of-fold predictions, beside those of a length-only scorer. Every fastText fit runs in a fresh
spawned process (fastText has diverged with NaN in a process that had trained other models) and
halves its learning rate when it diverges anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curate.config import TrainConfig
from curate.io import file_sha256, read_json, write_json
from curate.schema import BEHAVIORS, ID, RAW_RESPONSE, TEXT
from curate.views import LABEL_PREFIX, NORMALIZATIONS, classifier_text, token_starts, window_bounds
from curate.windowed import WindowLogits

log = logging.getLogger(__name__)

NONE_LABEL = "none"
MODEL_FILE, CARD_FILE = "model.bin", "card.json"
AUC_MARGIN = 0.05  # a behavior must beat the length-only scorer by this much ROC-AUC


class LabelsError(ValueError):
    """A labels file that cannot be trained on."""


# ---------------------------------------------------------------------------------------------
# Labels


def _integer_counts(path, table, behavior: str) -> np.ndarray:
    """One count column as an object array of ints and Nones; one-line error naming the first bad row."""
    values = table.column(behavior).to_pylist()
    out = np.empty(len(values), dtype=object)
    for row, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out[row] = None
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v):
            raise LabelsError(f"{path}: row {row}: '{behavior}' must be a whole-number count, found {v!r}")
        if v < 0:
            raise LabelsError(f"{path}: row {row}: '{behavior}' is a negative count ({v})")
        out[row] = int(v)
    return out


def _read_table(path: str | Path):
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise LabelsError(f"{path}: not a readable labels file: {str(e).splitlines()[0]}") from None
    missing = [c for c in (ID, TEXT, *BEHAVIORS) if c not in table.column_names]
    if missing:
        raise LabelsError(f"{path}: labels file lacks column(s) {', '.join(missing)}")
    counts = np.stack([_integer_counts(path, table, b) for b in BEHAVIORS], axis=1)
    usable = np.array([all(c is not None for c in row) for row in counts], dtype=bool)
    return table, counts, np.flatnonzero(usable)


def read_labels(path: str | Path) -> tuple[list[str], list[str], np.ndarray, int]:
    """Ids, texts and an (n, 4) count matrix of the usable rows of a labels file, plus how many
    rows were skipped because a count was null (unparseable label)."""
    table, counts, keep = _read_table(path)
    ids, texts = table.column(ID).to_pylist(), table.column(TEXT).to_pylist()
    return [ids[i] for i in keep], [texts[i] for i in keep], counts[keep].astype(np.int64), len(counts) - len(keep)


def read_evidence(path: str | Path) -> list[dict[str, list[str]]]:
    """Per usable row of `read_labels`, the labeler's evidence quotes by behavior
    (`raw_response` = {"evidence": {behavior: [quote, ...]}}); {} where there are none."""
    table, _, keep = _read_table(path)
    raw = table.column(RAW_RESPONSE).to_pylist() if RAW_RESPONSE in table.column_names else [None] * len(table)
    out = []
    for i in keep:
        try:
            evidence = json.loads(raw[i])["evidence"]
            out.append({b: [q for q in evidence.get(b, []) if isinstance(q, str) and q.strip()] for b in BEHAVIORS})
        except (TypeError, ValueError, KeyError, AttributeError):
            out.append({})
    return out


# ---------------------------------------------------------------------------------------------
# Text views: what the model sees


def window_starts(n_words: int, words: int, stride: int) -> list[int]:
    """First word of each window of `words` words every `stride` words; [0] (the whole text)
    when `words` is 0 or the text is not longer than one window."""
    if words <= 0 or n_words <= words:
        return [0]
    return list(range(0, n_words - words + stride, stride))


def fasttext_line(text: str, positives: list[str]) -> str:
    labels = " ".join(LABEL_PREFIX + b for b in (positives or [NONE_LABEL]))
    return f"{labels} {text}"


def training_lines(text: str, positive: np.ndarray, evidence: dict, recipe: dict) -> tuple[list[str], bool]:
    """fastText training lines of one labeled document, and whether its evidence was used: with
    windows and evidence for every positive behavior, one line per half-overlapping window,
    positive for a behavior where an evidence quote's middle lies; else the whole document."""
    view = classifier_text(text, recipe["normalization"])
    whole = [fasttext_line(view, [b for b, p in zip(BEHAVIORS, positive) if p])]
    words = recipe["window_words"]
    if not words or not recipe["evidence"]:
        return whole, False
    centers: list[tuple[int, int]] = []  # (behavior index, char offset of the quote's middle in view)
    quotes: list[tuple[str, str]] = []
    for j, b in enumerate(BEHAVIORS):
        found = [(view.find(q), q) for q in (classifier_text(q, recipe["normalization"]) for q in evidence.get(b, []))]
        found = [(start, q) for start, q in found if start >= 0 and q]
        if positive[j] and not found:
            return whole, False
        centers += [(j, start + len(q) // 2) for start, q in found]
        quotes += [(b, q) for _, q in found]
    tokens = view.split(" ")
    offsets = np.concatenate([[0], np.cumsum([len(t) + 1 for t in tokens])])  # char offset of each token
    lines = []
    for i in window_starts(len(tokens), words, stride=max(1, words // 2)):
        a, e = offsets[i], offsets[min(i + words, len(tokens))]
        labels = sorted({BEHAVIORS[j] for j, c in centers if a <= c < e}, key=BEHAVIORS.index)
        lines.append(fasttext_line(" ".join(tokens[i : i + words]), labels))
    # each quote is also a line of its own: the cleanest positive example of its behavior
    lines += [fasttext_line(q, [b]) for b, q in quotes]
    return lines, True


# ---------------------------------------------------------------------------------------------
# The classifier: fastText model + recipe (+ length calibration)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -z))  # 1 / (1 + e^-z) without overflow for very negative z


def text_lengths(texts: list[str]) -> np.ndarray:
    """Characters per document: the length feature of the calibration and the length-only scorer."""
    return np.fromiter((len(t) for t in texts), dtype=np.float64, count=len(texts))


def calibration_features(probs: np.ndarray, n_chars: np.ndarray) -> np.ndarray:
    """[logit(p), log(characters)] per document, for one behavior's probabilities."""
    return np.column_stack([_logit(probs), np.log(np.maximum(n_chars, 1))])


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iterations: int = 30) -> list[float]:
    """Logistic regression by Newton's method (L2 on the standardized slopes); returns
    [intercept, slope per column] on the original scale."""
    mean, std = x.mean(0), x.std(0) + 1e-9
    design = np.column_stack([np.ones(len(x)), (x - mean) / std])
    penalty = np.diag([0.0] + [l2] * x.shape[1])
    w = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = _sigmoid(design @ w)
        gradient = design.T @ (p - y) + penalty @ w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    slopes = w[1:] / std
    return [float(w[0] - slopes @ mean), *map(float, slopes)]


class BehaviorClassifier:
    """A trained classifier: the fastText model, the recipe that made its inputs, and the length
    calibration. `predict` gives one probability per behavior per document."""

    def __init__(self, model, recipe: dict, calibration: dict | None = None):
        self.model, self.recipe, self.calibration = model, recipe, calibration
        self.window_logits = WindowLogits(model, [LABEL_PREFIX + b for b in BEHAVIORS])

    @classmethod
    def load(cls, model_path: str | Path) -> BehaviorClassifier:
        """The model file and the recipe/calibration of the card beside it (a model without a
        card is read as a plain whole-document model)."""
        import fasttext

        card_path = Path(model_path).parent / CARD_FILE
        card = read_json(card_path) if card_path.exists() else {}
        recipe = card.get("recipe", {"normalization": "plain", "window_words": 0, "aggregate": "max"})
        return cls(fasttext.load_model(str(model_path)), recipe, card.get("calibration"))

    def window_probabilities(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(windows, 4) probabilities of each window of the recipe, and the text index of each window."""
        data, starts, first_token = token_starts(texts, self.recipe["normalization"])
        bounds, owner = window_bounds(first_token, self.recipe["window_words"])
        return _sigmoid(self.window_logits.logits(data, starts, bounds)), owner

    def raw_probabilities(self, texts: list[str]) -> np.ndarray:
        """(n, 4) window probabilities aggregated per document, before calibration."""
        probs, owner = self.window_probabilities(texts)
        out = np.zeros((len(texts), len(BEHAVIORS)))
        if self.recipe["aggregate"] == "max":
            np.maximum.at(out, owner, probs)
            return out
        np.add.at(out, owner, np.log1p(-np.clip(probs, 0, 1 - 1e-9)))  # noisy-or: 1 - prod(1 - p)
        return -np.expm1(out)

    def predict(self, texts: list[str]) -> np.ndarray:
        """(n, 4) float32 probabilities, one column per behavior."""
        probs = self.raw_probabilities(texts)
        if self.calibration:
            n_chars = text_lengths(texts)
            for j, b in enumerate(BEHAVIORS):
                w = np.asarray(self.calibration[b])
                probs[:, j] = _sigmoid(w[0] + calibration_features(probs[:, j], n_chars) @ w[1:])
        return probs.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Fitting in fresh processes


def _fasttext_params(cfg: TrainConfig) -> dict:
    return dict(
        epoch=cfg.epoch, lr=cfg.lr, dim=cfg.dim, wordNgrams=cfg.word_ngrams, minCount=cfg.min_count,
        bucket=cfg.bucket, loss="ova", thread=1, seed=0,
    )


MAX_FITS = 6  # a diverging fit is retried at half the learning rate, in a new process, up to this many fits


def _fit_job(lines: list[str], params: dict, recipe: dict, texts: list[str],
             model_path: str | None) -> tuple[dict, np.ndarray]:
    """Run in a fresh process: fit on `lines` once, optionally save, return the hyperparameters
    and the uncalibrated probabilities of `texts`. Raises RuntimeError('...NaN...') on divergence."""
    import fasttext

    with tempfile.TemporaryDirectory() as tmp:
        train_file = str(Path(tmp) / "train.txt")
        Path(train_file).write_text("\n".join(lines) + "\n")
        model = fasttext.train_supervised(input=train_file, verbose=0, **params)
    if model_path:
        model.save_model(model_path)
    probs = BehaviorClassifier(model, recipe).raw_probabilities(texts) if texts else np.zeros((0, len(BEHAVIORS)))
    return dict(params), probs


def fit_in_fresh_processes(jobs: list[tuple], workers: int) -> list[tuple[dict, np.ndarray]]:
    """Run `_fit_job(*job)` for each job, each fit in its own spawned process, `workers` at a time.
    A fit that diverges with NaN is retried in a new process at half the learning rate (fastText
    has diverged in processes that had already trained a model), at most MAX_FITS fits per job."""
    jobs = list(jobs)
    results: list = [None] * len(jobs)
    tried: list[list[float]] = [[] for _ in jobs]
    pending = list(range(len(jobs)))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes=max(1, min(workers, len(jobs))), maxtasksperchild=1) as pool:
        while pending:
            handles = {i: pool.apply_async(_fit_job, jobs[i]) for i in pending}
            pending = []
            for i, handle in handles.items():
                try:
                    results[i] = handle.get()
                except RuntimeError as e:
                    if "NaN" not in str(e):
                        raise
                    lines, params, *rest = jobs[i]
                    tried[i].append(params["lr"])
                    log.warning("fastText diverged (NaN) at lr=%s", params["lr"])
                    if len(tried[i]) >= MAX_FITS:
                        raise RuntimeError(f"fastText diverged (NaN) at every learning rate tried: {tried[i]}") from None
                    jobs[i] = (lines, {**params, "lr": params["lr"] / 2}, *rest)
                    pending.append(i)
    return results


def fit_fasttext(train_file: str, params: dict, model_path: str) -> dict:
    """Train one fastText model from a training file in a fresh process; return the
    hyperparameters actually used (lr may have been halved after NaN divergence)."""
    lines = Path(train_file).read_text().splitlines()
    recipe = {"normalization": "plain", "window_words": 0, "aggregate": "max"}
    return fit_in_fresh_processes([(lines, params, recipe, [], model_path)], workers=1)[0][0]


# ---------------------------------------------------------------------------------------------
# Metrics


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


def assign_folds(ids: list[str], positive: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold of each document: documents ordered by their positive-label pattern, then a seeded hash
    of the id, dealt round-robin, so every fold gets a share of each behavior's positives."""
    def h(doc_id: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big")

    pattern = positive.astype(np.int64) @ (1 << np.arange(positive.shape[1]))
    order = sorted(range(len(ids)), key=lambda i: (int(pattern[i]), h(ids[i])))
    folds = np.empty(len(ids), dtype=np.int64)
    folds[order] = np.arange(len(ids)) % k
    return folds


# ---------------------------------------------------------------------------------------------
# The train stage


def recipe_of(cfg: TrainConfig) -> dict:
    """The input recipe a config describes (stored in the card; the scorer follows it)."""
    return {"normalization": cfg.normalization, "window_words": cfg.window_words, "aggregate": cfg.aggregate,
            "evidence": cfg.evidence}


def cross_validate(texts: list[str], positive: np.ndarray, evidence: list[dict], folds: np.ndarray,
                   cfg: TrainConfig, final_model_path: str | None = None) -> dict:
    """Out-of-fold probabilities of every document (fold models each fitted in a fresh process),
    plus, when `final_model_path` is given, a model fitted on all documents saved there.

    Returns `oof` (n, 4) raw probabilities, `calibration` (per behavior, fitted on all out-of-fold
    probabilities; None unless cfg.calibrate_length), `oof_calibrated` (each fold calibrated by a
    regression fitted on the other folds), `params` and `evidence_docs`."""
    recipe, params = recipe_of(cfg), _fasttext_params(cfg)
    per_doc = [training_lines(t, p, e, recipe) for t, p, e in zip(texts, positive, evidence)]
    k = int(folds.max()) + 1
    jobs = [([line for i in np.flatnonzero(folds != f) for line in per_doc[i][0]], params, recipe,
             [texts[i] for i in np.flatnonzero(folds == f)], None) for f in range(k)]
    if final_model_path:
        jobs.append(([line for lines, _ in per_doc for line in lines], params, recipe, [], final_model_path))
    results = fit_in_fresh_processes(jobs, cfg.workers)
    oof = np.zeros((len(texts), len(BEHAVIORS)))
    for f in range(k):
        oof[folds == f] = results[f][1]
    out = {"oof": oof, "oof_calibrated": oof, "calibration": None, "params": results[-1][0],
           "evidence_docs": sum(used for _, used in per_doc)}
    if cfg.calibrate_length:
        n_chars = text_lengths(texts)
        calibrated = np.zeros_like(oof)
        for j in range(len(BEHAVIORS)):
            x = calibration_features(oof[:, j], n_chars)
            for f in range(k):
                w = np.asarray(fit_logistic(x[folds != f], positive[folds != f, j].astype(float)))
                calibrated[folds == f, j] = _sigmoid(w[0] + x[folds == f] @ w[1:])
        out["oof_calibrated"] = calibrated
        out["calibration"] = {b: fit_logistic(calibration_features(oof[:, j], n_chars), positive[:, j].astype(float))
                              for j, b in enumerate(BEHAVIORS)}
    return out


def evaluate(positive: np.ndarray, probs: np.ndarray, n_chars: np.ndarray, folds: np.ndarray) -> tuple[dict, list[str]]:
    """Per behavior the cross-validated metrics of the classifier and of a length-only scorer, and
    a warning line for each behavior whose ROC-AUC is not at least AUC_MARGIN above length-only."""
    metrics, warnings = {}, []
    length_score = np.log(np.maximum(n_chars, 1))
    for j, b in enumerate(BEHAVIORS):
        y = positive[:, j]
        m = cross_validated_metrics(y, probs[:, j], folds)
        length = cross_validated_metrics(y, length_score, folds)
        margin = None if m["roc_auc"] is None or length["roc_auc"] is None else round(m["roc_auc"] - length["roc_auc"], 4)
        metrics[b] = {**m, "positives": int(y.sum()), "length_only": length, "auc_over_length": margin,
                      "constant_roc_auc": 0.5}
        if margin is None or margin < AUC_MARGIN:
            warnings.append(f"{b}: cross-validated ROC-AUC {m['roc_auc']} is not at least {AUC_MARGIN} above "
                            f"the length-only scorer's {length['roc_auc']}: the classifier may mostly rank by length")
    return metrics, warnings


def train(labels_path: str | Path, out_dir: str | Path, cfg: TrainConfig, seed: int = 0,
          fingerprint: str | None = None) -> dict:
    """Train the classifier on all of a labels file; write `model.bin` and `card.json` to `out_dir`.

    The card's metrics are k-fold cross-validated by document (out-of-fold predictions), per
    behavior ROC-AUC, PR-AUC and F1 beside a length-only scorer's; behaviors that do not beat
    length by AUC_MARGIN are logged and listed under `warnings`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, texts, counts, skipped = read_labels(labels_path)
    evidence = read_evidence(labels_path)
    positive = counts > 0
    too_few = [b for j, b in enumerate(BEHAVIORS) if not 0 < positive[:, j].sum() < len(ids)]
    if len(ids) < 2 * cfg.cv_folds or too_few:
        raise LabelsError(f"{labels_path}: {len(ids)} usable rows are too few for {cfg.cv_folds}-fold "
                          f"cross-validation{' (no positive or no negative: ' + ', '.join(too_few) + ')' if too_few else ''}")
    folds = assign_folds(ids, positive, cfg.cv_folds, seed)
    n_chars = text_lengths(texts)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        model_tmp = Path(tmp) / MODEL_FILE
        cv = cross_validate(texts, positive, evidence, folds, cfg, final_model_path=str(model_tmp))
        model_tmp.replace(out_dir / MODEL_FILE)
    probs = cv["oof_calibrated"]
    metrics, warnings = evaluate(positive, probs, n_chars, folds)
    for line in warnings:
        log.warning("train: %s", line)
    thresholds = {b: best_f1_threshold(positive[:, j], probs[:, j]) for j, b in enumerate(BEHAVIORS)}
    recipe = recipe_of(cfg)
    card = {
        "model_file": MODEL_FILE,
        "labels": list(BEHAVIORS),
        "loss": "ova (one sigmoid per behavior, one model)",
        "target": "count > 0",
        "recipe": recipe,
        "normalization": NORMALIZATIONS[recipe["normalization"]],
        "calibration": cv["calibration"],
        "thresholds": thresholds,
        "threshold_rule": "F1-best on the out-of-fold probabilities (F1 in metrics: each fold cut at the other folds' best)",
        "metrics_on": f"{cfg.cv_folds}-fold cross-validation by document (out-of-fold predictions of all "
                      f"{len(ids)} documents; the shipped model is fitted on all of them)",
        "metrics": metrics,
        "warnings": warnings,
        "n_train": len(ids),
        "n_valid": len(ids),
        "n_skipped_unparsed": skipped,
        "n_trained_on_evidence_windows": cv["evidence_docs"],
        "training_data": {"path": str(labels_path), "sha256": file_sha256(labels_path)},
        "fasttext": cv["params"],
        "seed": seed,
        "fingerprint": fingerprint,
    }
    write_json(card, out_dir / CARD_FILE)
    return card
