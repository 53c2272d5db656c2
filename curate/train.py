"""Distil behavior labels into one multi-label fastText classifier, evaluated by cross-validation.

The recipe (chosen by `benchmarks/classifier_experiments.py`, see `classifiers/README.md`):
- text normalization that keeps LaTeX commands and math symbols as tokens (`curate.views`);
- `fit: linear` (default): regularized logistic regressions on fastText's own input rows, written
  as a fastText model (`curate.linear`): a document model on the presence of words and word
  bigrams, and a window model trained on windows placed by the labeler's evidence quotes
  (`curate.evidence`) whose window logits are aggregated per document (max by default);
  `fit: fasttext`: fastText's own trainer on those windows (one-vs-all loss);
- a calibration per behavior (logistic regression on the model's logits, optionally log length),
  fitted on out-of-fold predictions, so that probabilities mean what they say.

Evaluation is k-fold cross-validation by document: every metric in the card comes from
out-of-fold predictions, beside those of a length-only scorer and of a TF-IDF + logistic
regression baseline on the same folds. The linear fit chooses its regularization by an inner
cross-validation on each training fold, and ships the mean of the fold models. Every fastText fit
runs in a fresh spawned process (fastText has diverged with NaN in a process that had trained
other models) and is refitted at half the learning rate when it diverges anyway (NaN, or weights
that exploded).
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
    CARD_FILE, MODEL_FILE, BehaviorClassifier, calibration_design, fit_logistic, sigmoid, text_lengths,
)
from curate.config import TrainConfig
from curate.evidence import evidence_lines
from curate.io import file_sha256, write_json, write_parquet
from curate.labels import LabelsError, read_labels
from curate.layout import OOF_FILE
from curate.linear import Corpus, featurize, fit_document_model, fit_window_model, write_model
from curate.metrics import (
    best_f1_threshold, cross_validated_metrics, length_matched_auc, reliability_curve, url_host,
)
from curate.schema import BEHAVIORS
from curate.views import LABEL_PREFIX, NORMALIZATIONS

log = logging.getLogger(__name__)

NONE_LABEL = "none"
AUC_MARGIN = 0.05  # a behavior must beat the length-only scorer by this much ROC-AUC
MAX_ROW_LOGIT = 1e4  # a fastText fit with an input row whose logit is larger has diverged (fits give < ~300)


def fasttext_line(text: str, positives: list[str]) -> str:
    labels = " ".join(LABEL_PREFIX + b for b in (positives or [NONE_LABEL]))
    return f"{labels} {text}"


def _with_blas_threads(n: int):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(n)  # numpy's BLAS spinning 2 threads per process on 2 shared cores is ~100x slower


# ---------------------------------------------------------------------------------------------
# fastText fits in fresh processes


def _fasttext_params(cfg: TrainConfig) -> dict:
    return dict(
        epoch=cfg.epoch, lr=cfg.lr, dim=cfg.dim, wordNgrams=cfg.word_ngrams, minCount=cfg.min_count,
        bucket=cfg.bucket, loss="ova", thread=1, seed=0,
    )


MAX_FITS = 6  # a diverging fit is retried at half the learning rate, in a new process, up to this many fits


def check_converged(model) -> None:
    """Raise RuntimeError('... diverged ...') when a fastText model's weights are not finite or an
    input row's logit is far outside what a fit produces (fastText can blow up without a NaN)."""
    input_matrix, output_matrix = model.get_input_matrix(), model.get_output_matrix()
    if not (np.isfinite(input_matrix).all() and np.isfinite(output_matrix).all()):
        raise RuntimeError("fastText diverged: non-finite weights")
    largest = float(np.abs(input_matrix @ output_matrix.T).max()) if input_matrix.size else 0.0
    if largest > MAX_ROW_LOGIT:
        raise RuntimeError(f"fastText diverged: an input row's logit is {largest:.3g} (limit {MAX_ROW_LOGIT:g})")


def _fit_job(lines: list[str], params: dict, recipe: dict, texts: list[str],
             model_path: str | None) -> tuple[dict, np.ndarray]:
    """Run in a fresh process: fit on `lines` once, check it converged, optionally save, return
    the hyperparameters and the (texts, behaviors, 1) calibration inputs of `texts`. Raises
    RuntimeError('...NaN...' or '...diverged...') on divergence."""
    import fasttext

    with tempfile.TemporaryDirectory() as tmp:
        train_file = str(Path(tmp) / "train.txt")
        Path(train_file).write_text("\n".join(lines) + "\n")
        model = fasttext.train_supervised(input=train_file, verbose=0, **params)
    check_converged(model)
    if model_path:
        model.save_model(model_path)
    inputs = BehaviorClassifier(model, recipe).inputs(texts) if texts else np.zeros((0, len(BEHAVIORS), 1))
    return dict(params), inputs


def _diverged(error: RuntimeError) -> bool:
    return "NaN" in str(error) or "diverged" in str(error)


def fit_in_fresh_processes(jobs: list[tuple], workers: int) -> list[tuple[dict, np.ndarray]]:
    """Run `_fit_job(*job)` for each job, each fit in its own spawned process, `workers` at a time.
    A fit that diverges (NaN, or exploded weights) is retried in a new process at half the learning
    rate (fastText has diverged in processes that had already trained a model), at most MAX_FITS
    fits per job."""
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
                    if not _diverged(e):
                        raise
                    lines, params, *rest = jobs[i]
                    tried[i].append(params["lr"])
                    log.warning("%s at lr=%s; refitting at lr=%s", e, params["lr"], params["lr"] / 2)
                    if len(tried[i]) >= MAX_FITS:
                        raise RuntimeError(f"fastText diverged (NaN or exploded weights) at every learning rate "
                                           f"tried: {tried[i]}") from None
                    jobs[i] = (lines, {**params, "lr": params["lr"] / 2}, *rest)
                    pending.append(i)
    return results


def fit_fasttext(train_file: str, params: dict, model_path: str) -> dict:
    """Train one fastText model from a training file in a fresh process; return the
    hyperparameters actually used (lr halved after each divergence)."""
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
# Cross-validation


def recipe_of(cfg: TrainConfig) -> dict:
    """The input recipe a config describes (stored in the card; the scorer follows it)."""
    recipe = {"fit": cfg.fit, "normalization": cfg.normalization, "window_words": cfg.window_words,
              "aggregate": cfg.aggregate, "evidence": cfg.evidence}
    if cfg.fit == "linear":
        recipe.update(presence_power=cfg.presence_power, word_ngrams=cfg.word_ngrams, bucket=cfg.bucket,
                      embeddings=cfg.embeddings)
    return recipe


def _quotes(texts: list[str], evidence: list[dict]) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """The evidence quotes as extra texts after the documents, and per document (behavior, text index)."""
    extra, quotes = [], []
    for ev in evidence:
        quotes.append([])
        for j, b in enumerate(BEHAVIORS):
            for q in ev.get(b, []):
                quotes[-1].append((j, len(texts) + len(extra)))
                extra.append(q)
    return extra, quotes


_SHARED: dict = {}  # what every fold job of a pool reads (sent once per worker process)


def _share(data: dict) -> None:
    _SHARED.update(data)


def _linear_fold_job(train: np.ndarray, test: np.ndarray, inner: np.ndarray, windows: bool) -> tuple:
    """Both models of the documents `train` and the (test, behaviors, inputs) calibration inputs of `test`."""
    feat, positive, recipe, fit = _SHARED["feat"], _SHARED["positive"], _SHARED["recipe"], _SHARED["fit"]
    with _with_blas_threads(1):
        document, logits = fit_document_model(feat, train, test, positive, inner, fit["c_grid"],
                                              fit["embedding_grid"], fit["min_count"], recipe["presence_power"])
        window, inputs = None, [logits]
        if windows:
            window, aggregated = fit_window_model(feat, train, test, positive, fit["window_c"], fit["min_count"],
                                                  recipe["aggregate"])
            inputs.append(aggregated)
    return document, window, np.stack(inputs, axis=2)


def _baseline_job(texts: list[str], positive: np.ndarray, folds: np.ndarray) -> np.ndarray:
    with _with_blas_threads(1):
        return baseline_scores(texts, positive, folds)


def baseline_scores(texts: list[str], positive: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold scores of the reference baseline: scikit-learn TfidfVectorizer(ngram_range=(1, 2),
    min_df=2, sublinear_tf=True) + LogisticRegression(C=10, class_weight='balanced') on whole
    documents, one per behavior, fitted on the other folds."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    out = np.zeros(positive.shape)
    for f in np.unique(folds):
        train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        x_train = vectorizer.fit_transform([texts[i] for i in train])
        x_test = vectorizer.transform([texts[i] for i in test])
        for j in range(positive.shape[1]):
            if positive[train, j].all() or not positive[train, j].any():
                out[test, j] = float(positive[train, j].mean())
                continue
            model = LogisticRegression(C=10, class_weight="balanced", max_iter=2000).fit(x_train, positive[train, j])
            out[test, j] = model.decision_function(x_test)
    return out


def _cross_validate_linear(texts, positive, evidence, folds, ids, cfg, seed, final_model_path, with_baseline) -> dict:
    recipe = recipe_of(cfg)
    quote_texts, quotes = _quotes(texts, evidence)
    corpus = Corpus.of(texts + quote_texts, cfg.normalization)
    lines = evidence_lines(corpus, len(texts), positive, quotes, cfg.window_words, cfg.evidence)
    feat = featurize(corpus, len(texts), lines, recipe)
    fit = {"min_count": cfg.min_count, "c_grid": list(cfg.c_grid), "window_c": cfg.window_c,
           "embedding_grid": list(cfg.embedding_grid)}
    k, windows = int(folds.max()) + 1, bool(cfg.window_words)
    jobs = []
    for f in range(k):
        train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        jobs.append((train, test, assign_folds([ids[i] for i in train], positive[train], k, seed), windows))
    if final_model_path:  # the shipped document model: the same procedure on all documents
        jobs.append((np.arange(len(texts)), np.zeros(0, dtype=np.int64), folds, False))
    ctx = multiprocessing.get_context("spawn")
    with procs.tied_pool(ctx, max(1, min(cfg.workers, len(jobs))), initializer=_share,
                         initargs=({"feat": feat, "positive": positive, "recipe": recipe, "fit": fit},)) as pool:
        baseline = pool.apply_async(_baseline_job, (texts, positive, folds)) if with_baseline else None
        results = pool.starmap(_linear_fold_job, jobs)
        baseline = baseline.get() if with_baseline else None
    inputs = np.zeros((len(texts), len(BEHAVIORS), results[0][2].shape[2]))
    for f in range(k):
        inputs[jobs[f][1]] = results[f][2]
    affine = None
    if final_model_path:
        document = results[k][0]
        write_model(final_model_path, corpus, feat, document, [window for _, window, _ in results[:k] if window],
                    positive, recipe, cfg.min_count)
        # the calibration reads the Platt-scaled logit a + b * (file's logit + intercept)
        affine = (document.platt[:, 0] + document.platt[:, 1] * document.intercept, document.platt[:, 1])
    input_names = ["document"] + ([f"window_{cfg.aggregate}"] if windows else [])
    return {"inputs": inputs, "input_names": input_names, "document_affine": affine, "baseline": baseline,
            "evidence_docs": lines.evidence_docs,
            "fit": {"method": "class-balanced L2 logistic regressions on fastText's input rows (curate.linear)",
                    "lambda_c_by_fold": {b: [r[0].c[j] for r in results[:k]] for j, b in enumerate(BEHAVIORS)},
                    "lambda_c": {b: results[k][0].c[j] for j, b in enumerate(BEHAVIORS)} if final_model_path else None,
                    "c_grid": list(cfg.c_grid), "embeddings": cfg.embeddings, "embedding_grid": list(cfg.embedding_grid),
                    "window_c": cfg.window_c, "min_count": cfg.min_count,
                    "word_ngrams": cfg.word_ngrams, "bucket": cfg.bucket, "loss": "ova",
                    "labels": len(BEHAVIORS) * len(input_names)}}


def _cross_validate_fasttext(texts, positive, evidence, folds, cfg, final_model_path, with_baseline) -> dict:
    recipe, params = recipe_of(cfg), _fasttext_params(cfg)
    quote_texts, quotes = _quotes(texts, evidence)
    corpus = Corpus.of(texts + quote_texts, cfg.normalization)
    lines = evidence_lines(corpus, len(texts), positive, quotes, cfg.window_words, cfg.evidence)
    line_texts = [fasttext_line(t, [b for b, p in zip(BEHAVIORS, label) if p])
                  for t, label in zip(lines.texts(corpus), lines.labels)]
    k = int(folds.max()) + 1
    jobs = [([line for line, d in zip(line_texts, lines.document) if folds[d] != f], params, recipe,
             [texts[i] for i in np.flatnonzero(folds == f)], None) for f in range(k)]
    if final_model_path:
        jobs.append((line_texts, params, recipe, [], final_model_path))
    results = fit_in_fresh_processes(jobs, cfg.workers)
    inputs = np.zeros((len(texts), len(BEHAVIORS), 1))
    for f in range(k):
        inputs[folds == f] = results[f][1]
    return {"inputs": inputs, "input_names": [f"window_{cfg.aggregate}"], "document_affine": None,
            "evidence_docs": lines.evidence_docs,
            "baseline": baseline_scores(texts, positive, folds) if with_baseline else None,
            "fit": {"method": "fastText's trainer", **results[-1][0]}}


def cross_validate(texts: list[str], positive: np.ndarray, evidence: list[dict], folds: np.ndarray,
                   cfg: TrainConfig, ids: list[str] | None = None, seed: int = 0,
                   final_model_path: str | None = None, with_baseline: bool = True) -> dict:
    """Out-of-fold predictions of every document, plus, when `final_model_path` is given, the
    shipped model saved there.

    Returns `inputs` (n, behaviors, k) out-of-fold calibration inputs, `oof_calibrated` (each fold
    calibrated by a regression fitted on the other folds), `calibration` (the card's, fitted on all
    out-of-fold inputs), `baseline` (n, behaviors) out-of-fold TF-IDF baseline scores (None unless
    `with_baseline`), `fit` and
    `evidence_docs`."""
    ids = ids if ids is not None else [str(i) for i in range(len(texts))]
    with _with_blas_threads(1):
        if cfg.fit == "linear":
            out = _cross_validate_linear(texts, positive, evidence, folds, ids, cfg, seed, final_model_path,
                                         with_baseline)
        else:
            out = _cross_validate_fasttext(texts, positive, evidence, folds, cfg, final_model_path, with_baseline)
        n_chars = text_lengths(texts) if cfg.calibrate_length else None
        out["oof_calibrated"], out["calibration"] = calibrate(out["inputs"], positive, folds, n_chars,
                                                              out["input_names"], out["document_affine"])
    return out


def calibrate(inputs: np.ndarray, positive: np.ndarray, folds: np.ndarray, n_chars: np.ndarray | None,
              names: list[str], document_affine: tuple | None = None) -> tuple[np.ndarray, dict]:
    """Per behavior a logistic regression on the (n, k) out-of-fold input logits (and log length):
    each fold's calibrated probabilities from a regression fitted on the other folds, and the
    card's calibration fitted on all of them. `document_affine` (offset, scale per behavior): the
    first input as the shipped model gives it is x, the calibration's is offset + scale * x
    (folded into the card's weights)."""
    calibrated = np.zeros(positive.shape)
    weights = {}
    for j, b in enumerate(BEHAVIORS):
        x, y = calibration_design(inputs[:, j], n_chars), positive[:, j].astype(float)
        for f in np.unique(folds):
            w = np.asarray(fit_logistic(x[folds != f], y[folds != f]))
            calibrated[folds == f, j] = sigmoid(w[0] + x[folds == f] @ w[1:])
        w = fit_logistic(x, y)
        if document_affine is not None:
            offset, scale = float(document_affine[0][j]), float(document_affine[1][j])
            w[0], w[1] = w[0] + w[1] * offset, w[1] * scale
        weights[b] = w
    return calibrated, {"inputs": names, "length": n_chars is not None, "weights": weights}


# ---------------------------------------------------------------------------------------------
# The card


def evaluate(positive: np.ndarray, probs: np.ndarray, n_chars: np.ndarray, folds: np.ndarray,
             baseline: np.ndarray | None = None, hosts: list[str] | None = None) -> tuple[dict, list[str]]:
    """Per behavior the cross-validated metrics of the classifier, of a length-only scorer and of
    the TF-IDF baseline (same folds), length-matched ROC-AUC (pairs of a positive and a negative
    with the same length quintile and url host), the calibration check (expected vs actual
    positives) and reliability-curve data; and a warning line for each behavior whose ROC-AUC is
    not at least AUC_MARGIN above length-only or is below the baseline."""
    metrics, warnings = {}, []
    length_score = np.log(np.maximum(n_chars, 1))

    def matched(y, score):
        return None if hosts is None else length_matched_auc(y, score, n_chars, hosts)

    for j, b in enumerate(BEHAVIORS):
        y = positive[:, j]
        m = cross_validated_metrics(y, probs[:, j], folds)
        length = {**cross_validated_metrics(y, length_score, folds), "length_matched_roc_auc": matched(y, length_score)}
        margin = None if m["roc_auc"] is None or length["roc_auc"] is None else round(m["roc_auc"] - length["roc_auc"], 4)
        expected = float(probs[:, j].sum())
        metrics[b] = {**m, "length_matched_roc_auc": matched(y, probs[:, j]), "positives": int(y.sum()),
                      "expected_positives": round(expected, 2),
                      "expected_over_actual": round(expected / y.sum(), 4) if y.any() else None,
                      "reliability": reliability_curve(y, probs[:, j]),
                      "length_only": length, "auc_over_length": margin, "constant_roc_auc": 0.5}
        if margin is None or margin < AUC_MARGIN:
            warnings.append(f"{b}: cross-validated ROC-AUC {m['roc_auc']} is not at least {AUC_MARGIN} above "
                            f"the length-only scorer's {length['roc_auc']}: the classifier may mostly rank by length")
        if baseline is not None:
            base = {**cross_validated_metrics(y, baseline[:, j], folds),
                    "length_matched_roc_auc": matched(y, baseline[:, j])}
            metrics[b]["baseline"] = base
            metrics[b]["auc_over_baseline"] = (None if m["roc_auc"] is None or base["roc_auc"] is None
                                               else round(m["roc_auc"] - base["roc_auc"], 4))
            if metrics[b]["auc_over_baseline"] is not None and metrics[b]["auc_over_baseline"] < 0:
                warnings.append(f"{b}: cross-validated ROC-AUC {m['roc_auc']} is below the TF-IDF + logistic "
                                f"regression baseline's {base['roc_auc']} on the same folds")
    return metrics, warnings


def train(labels_path: str | Path, out_dir: str | Path, cfg: TrainConfig, seed: int = 0,
          fingerprint: str | None = None) -> dict:
    """Train the classifier on all of a labels file; write `model.bin` and `card.json` to `out_dir`.

    The card's metrics are k-fold cross-validated by document (out-of-fold predictions), per
    behavior ROC-AUC, PR-AUC and F1 beside a length-only scorer's and the TF-IDF baseline's,
    length-matched ROC-AUC and the calibration check; behaviors that do not beat length by
    AUC_MARGIN, or fall below the baseline, are logged and listed under `warnings`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = read_labels(labels_path)
    ids, texts, counts, evidence = labels.ids, labels.texts, labels.counts, labels.evidence
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
        cv = cross_validate(texts, positive, evidence, folds, cfg, ids=ids, seed=seed, final_model_path=str(model_tmp))
        model_tmp.replace(out_dir / MODEL_FILE)
    probs = cv["oof_calibrated"]
    write_out_of_fold(out_dir / OOF_FILE, ids, positive, probs, n_chars, folds)
    metrics, warnings = evaluate(positive, probs, n_chars, folds, cv["baseline"], [url_host(u) for u in labels.urls])
    for line in warnings:
        log.warning("train: %s", line)
    thresholds = {b: best_f1_threshold(positive[:, j], probs[:, j]) for j, b in enumerate(BEHAVIORS)}
    recipe = recipe_of(cfg)
    card = {
        "model_file": MODEL_FILE,
        "labels": list(BEHAVIORS),
        "loss": "ova (one sigmoid per label, one model)",
        "target": "count > 0",
        "recipe": recipe,
        "normalization": NORMALIZATIONS[recipe["normalization"]],
        "calibration": cv["calibration"],
        "thresholds": thresholds,
        "threshold_rule": "F1-best on the out-of-fold probabilities (F1 in metrics: each fold cut at the other folds' best)",
        "metrics_on": f"{cfg.cv_folds}-fold cross-validation by document (out-of-fold predictions of all "
                      f"{len(ids)} documents, calibrated by regressions fitted on the other folds)",
        "baseline": "scikit-learn TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True) + "
                    "LogisticRegression(C=10, class_weight='balanced'), whole documents, same folds",
        "length_matched": "ROC-AUC over (positive, negative) pairs in the same length quintile and url host",
        "metrics": metrics,
        "warnings": warnings,
        "n_train": len(ids),
        "n_valid": len(ids),
        "n_skipped_unparsed": labels.skipped,
        "n_trained_on_evidence_windows": cv["evidence_docs"],
        "training_data": {"path": str(labels_path), "sha256": file_sha256(labels_path)},
        "fit": cv["fit"],
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
