"""Distil behavior labels into one multi-label fastText classifier.

One model scores all four behaviors (fastText's one-vs-all loss: an independent sigmoid per
label), so scoring a document is one `predict` call instead of four. Each fit runs in a fresh
process: fastText has been seen to diverge with NaN in a process that already trained a model.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import multiprocessing
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curate.config import TrainConfig
from curate.io import write_json
from curate.schema import BEHAVIORS, ID, TEXT, normalize_text

log = logging.getLogger(__name__)

LABEL_PREFIX = "__label__"
NONE_LABEL = "none"
MODEL_FILE, CARD_FILE = "model.bin", "card.json"


class LabelsError(ValueError):
    """A labels file that cannot be trained on."""


def read_labels(path: str | Path) -> tuple[list[str], list[str], np.ndarray, int]:
    """Ids, texts and an (n, 4) count matrix of the usable rows of a labels file, plus how many
    rows were skipped because a count was null (unparseable label)."""
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise LabelsError(f"{path}: not a readable labels file: {str(e).splitlines()[0]}") from None
    missing = [c for c in (ID, TEXT, *BEHAVIORS) if c not in table.column_names]
    if missing:
        raise LabelsError(f"{path}: labels file lacks column(s) {', '.join(missing)}")
    counts = []
    for b in BEHAVIORS:
        col = table.column(b)
        if not (col.type.id in range(2, 10)):  # pyarrow integer type ids
            raise LabelsError(f"{path}: column '{b}' must hold integer counts, found {col.type}")
        counts.append(np.array(col.to_pylist(), dtype=object))
    counts = np.stack(counts, axis=1)
    usable = np.array([all(c is not None for c in row) for row in counts], dtype=bool)
    for row, ok in enumerate(usable):
        if ok and min(counts[row]) < 0:
            raise LabelsError(f"{path}: row {row}: negative count {list(counts[row])}")
    ids, texts = table.column(ID).to_pylist(), table.column(TEXT).to_pylist()
    keep = np.flatnonzero(usable)
    return [ids[i] for i in keep], [texts[i] for i in keep], counts[keep].astype(np.int64), int((~usable).sum())


def split_by_document(ids: list[str], valid_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation documents: a seeded hash of each id, stable across runs."""
    def u(doc_id: str) -> float:
        h = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    return np.array([u(i) < valid_fraction for i in ids], dtype=bool)


def fasttext_line(text: str, positives: list[str]) -> str:
    labels = " ".join(LABEL_PREFIX + b for b in (positives or [NONE_LABEL]))
    return f"{labels} {normalize_text(text)}"


def _fasttext_params(cfg: TrainConfig) -> dict:
    return dict(
        epoch=cfg.epoch, lr=cfg.lr, dim=cfg.dim, wordNgrams=cfg.word_ngrams, minCount=cfg.min_count,
        bucket=cfg.bucket, loss="ova", thread=1, seed=0,
    )


def _fit_in_this_process(train_file: str, params: dict, model_path: str, quantize: bool) -> dict:
    import fasttext

    lr = params["lr"]
    for _ in range(4):
        try:
            model = fasttext.train_supervised(input=train_file, verbose=0, **{**params, "lr": lr})
            break
        except RuntimeError as e:
            if "NaN" not in str(e):
                raise
            log.warning("fastText diverged (NaN) at lr=%s; retrying at lr=%s", lr, lr / 2)
            lr /= 2
    else:
        raise RuntimeError(f"fastText diverged at every learning rate down to {lr * 2}")
    if quantize:
        model.quantize(input=train_file, retrain=False, cutoff=50_000, qnorm=True)
    model.save_model(model_path)
    return {**params, "lr": lr}


def fit_fasttext(train_file: str, params: dict, model_path: str, quantize: bool = False) -> dict:
    """Train a fastText model in a fresh process; return the hyperparameters actually used."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_fit_in_this_process, train_file, params, model_path, quantize).result()


def predict_probabilities(model, texts: list[str]) -> np.ndarray:
    """(n, 4) probability matrix, one column per behavior, for already-normalized texts."""
    labels, probs = model.predict(texts, k=-1, threshold=0.0)
    index = {LABEL_PREFIX + b: j for j, b in enumerate(BEHAVIORS)}
    out = np.zeros((len(texts), len(BEHAVIORS)), dtype=np.float32)
    for i, (lab, pr) in enumerate(zip(labels, probs)):
        for name, p in zip(lab, pr):
            j = index.get(name)
            if j is not None:
                out[i, j] = p
    return out


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC-AUC by the rank-sum (Mann-Whitney) formula, ties averaged; None when one class is absent."""
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = np.asarray(score)[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict:
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


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def train(labels_path: str | Path, out_dir: str | Path, cfg: TrainConfig, seed: int = 0,
          fingerprint: str | None = None) -> dict:
    """Train the classifier on a labels file; write `model.bin` and `card.json` to `out_dir`.

    The model is fitted on the training split; the card reports per-behavior precision, recall and
    F1 at the F1-best threshold and ROC-AUC on the held-out split, beside a constant predictor's.
    """
    import fasttext

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, texts, counts, skipped = read_labels(labels_path)
    positive = counts > 0
    is_valid = split_by_document(ids, cfg.valid_fraction, seed)
    if is_valid.all() or not is_valid.any():
        raise LabelsError(f"{labels_path}: {len(ids)} usable rows are too few for a train/valid split")
    params = _fasttext_params(cfg)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text(
            "\n".join(
                fasttext_line(t, [b for b, p in zip(BEHAVIORS, pos) if p])
                for t, pos, v in zip(texts, positive, is_valid)
                if not v
            )
            + "\n"
        )
        model_tmp = Path(tmp) / MODEL_FILE
        params = fit_fasttext(str(train_file), params, str(model_tmp), cfg.quantize)
        model = fasttext.load_model(str(model_tmp))
        valid_texts = [normalize_text(t) for t, v in zip(texts, is_valid) if v]
        probs = predict_probabilities(model, valid_texts)
        model_tmp.replace(out_dir / MODEL_FILE)
    y_valid = positive[is_valid]
    metrics, thresholds = {}, {}
    for j, b in enumerate(BEHAVIORS):
        thresholds[b] = best_f1_threshold(y_valid[:, j], probs[:, j])
        metrics[b] = {
            "roc_auc": roc_auc(y_valid[:, j], probs[:, j]),
            "constant_roc_auc": 0.5,
            **binary_metrics(y_valid[:, j], probs[:, j], thresholds[b]),
            "valid_positives": int(y_valid[:, j].sum()),
        }
    card = {
        "model_file": MODEL_FILE,
        "labels": list(BEHAVIORS),
        "loss": "ova (one sigmoid per behavior, one model)",
        "target": "count > 0",
        "normalization": "newlines and runs of whitespace -> one space (curate.schema.normalize_text)",
        "thresholds": thresholds,
        "threshold_rule": "F1-best on the held-out split",
        "metrics_on": "held-out split (documents split by seeded hash of id)",
        "metrics": metrics,
        "n_train": int((~is_valid).sum()),
        "n_valid": int(is_valid.sum()),
        "n_skipped_unparsed": skipped,
        "training_data": {"path": str(labels_path), "sha256": file_sha256(labels_path)},
        "fasttext": params,
        "quantized": cfg.quantize,
        "seed": seed,
        "fingerprint": fingerprint,
    }
    write_json(card, out_dir / CARD_FILE)
    return card
