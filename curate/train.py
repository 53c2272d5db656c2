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
import logging
import multiprocessing
import tempfile
from pathlib import Path

import numpy as np

from curate import procs
from curate.classifier import (
    CARD_FILE, MODEL_FILE, BehaviorClassifier, calibration_features, fit_logistic, sigmoid, text_lengths,
)
from curate.config import TrainConfig
from curate.io import file_sha256, write_json, write_parquet
from curate.labels import LabelsError, read_evidence, read_labels
from curate.layout import OOF_FILE
from curate.metrics import best_f1_threshold, cross_validated_metrics
from curate.schema import BEHAVIORS
from curate.views import LABEL_PREFIX, NORMALIZATIONS, classifier_text

log = logging.getLogger(__name__)

NONE_LABEL = "none"
AUC_MARGIN = 0.05  # a behavior must beat the length-only scorer by this much ROC-AUC


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
    with procs.tied_pool(ctx, max(1, min(workers, len(jobs))), maxtasksperchild=1) as pool:
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
                calibrated[folds == f, j] = sigmoid(w[0] + x[folds == f] @ w[1:])
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
    missing = [f"no {'positive' if not positive[:, j].any() else 'negative'} label of {b}"
               for j, b in enumerate(BEHAVIORS) if positive[:, j].all() or not positive[:, j].any()]
    if len(ids) < 2 * cfg.cv_folds or missing:
        raise LabelsError(f"{labels_path}: {len(ids)} usable rows are too few for {cfg.cv_folds}-fold "
                          f"cross-validation{' (' + '; '.join(missing) + ')' if missing else ''}")
    folds = assign_folds(ids, positive, cfg.cv_folds, seed)
    n_chars = text_lengths(texts)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        model_tmp = Path(tmp) / MODEL_FILE
        cv = cross_validate(texts, positive, evidence, folds, cfg, final_model_path=str(model_tmp))
        model_tmp.replace(out_dir / MODEL_FILE)
    probs = cv["oof_calibrated"]
    write_out_of_fold(out_dir / OOF_FILE, ids, positive, probs, n_chars, folds)
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


def write_out_of_fold(path: Path, ids: list[str], positive: np.ndarray, probs: np.ndarray, n_chars: np.ndarray,
                      folds: np.ndarray) -> None:
    """The cross-validation's out-of-fold predictions beside the model (`oof.parquet`: id, fold,
    characters, and per behavior the label and the calibrated probability): the report draws its
    ROC curves and reliability diagram from them, never from documents a model was trained on."""
    import pyarrow as pa

    columns = {"id": ids, "fold": folds.astype(np.int32), "n_chars": n_chars.astype(np.int64)}
    for j, b in enumerate(BEHAVIORS):
        columns[f"label_{b}"] = positive[:, j]
        columns[f"p_{b}"] = probs[:, j].astype(np.float32)
    write_parquet(pa.table(columns), path)
