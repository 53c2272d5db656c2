"""fastText's supervised prediction for every window of a batch at once, in numpy.

A fastText classifier is linear up to its output sigmoid: a line's logit for a label is the mean,
over the line's input rows (each known word, each word-bigram bucket, the end-of-line token), of
that row's dot product with the label's output vector. So the products are computed once per
input row at load time (`rows x labels`), every token of a batch contributes its word row and the
bucket of the bigram it starts, and a window's logits are one `np.add.reduceat` over its tokens.
Python runs once per distinct token of a batch (a cached lookup), never per window: asking
fastText window by window cost ~14 µs of result conversion per window, more than the model itself.

Hashing and bucketing follow fastText's dictionary (FNV-1a over the UTF-8 bytes, bytes sign-
extended; n-gram bucket `((h1 * 116049371 + h2) * 116049371 + ...) mod bucket` in 64 bits) and the end-of-line token
that `predict` appends, so the logits equal `get_sentence_vector(line) @ output_matrix.T`
(tests/test_train.py checks it). The probability is the exact sigmoid of the logit; fastText's
own `predict` reads a 512-step sigmoid table, so its numbers differ by up to ~0.01.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EOS = "</s>"
NGRAM_MULTIPLIER = np.uint64(116049371)
CACHE_LIMIT = 500_000  # distinct tokens remembered between batches (~60 MB at most)


def fnv1a(token: str) -> int:
    """fastText's 32-bit word hash, as the signed int32 its dictionary stores."""
    h = 2166136261
    for byte in token.encode("utf-8"):
        h = ((h ^ (byte | 0xFFFFFF00 if byte >= 0x80 else byte)) * 16777619) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


class WindowLogits:
    """The per-input-row logit table of one fastText supervised model (one-vs-all loss, word
    n-grams, no subwords: what `curate train` fits) for the labels asked for, and the token
    lookups it needs."""

    def __init__(self, model, labels: list[str]):
        args = model.f.getArgs()
        if args.maxn > 0 or "ova" not in str(args.loss):
            raise ValueError("the window scorer needs a one-vs-all fastText model without subwords "
                             f"(this one: loss {args.loss}, maxn {args.maxn})")
        self.word_ngrams = args.wordNgrams
        words = model.get_words()
        self.n_words = len(words)
        input_matrix = model.get_input_matrix()
        self.bucket = input_matrix.shape[0] - self.n_words
        known = model.get_labels()
        output = model.get_output_matrix()[[known.index(label) if label in known else 0 for label in labels]]
        # a label the model never saw (no positive line in its training data) gets logit -inf: probability 0
        self.unseen = np.array([label not in known for label in labels])
        table = (input_matrix @ output.T).astype(np.float64)  # float32 products: no float64 copy of the matrix
        self.rows = np.vstack([table, np.zeros((1, len(labels)))])  # last row: nothing (a word not in the vocabulary)
        self.nothing = len(self.rows) - 1
        self.word_ids = {w: i for i, w in enumerate(words)}
        self.eos_row, self.eos_hash = self.word_ids[EOS], fnv1a(EOS)
        self._pieces: dict[str, int] = {}  # token (with the spaces after it) -> row << 32 | 32-bit hash

    def _packed(self, piece: str) -> int:
        token = piece.rstrip(" ")
        packed = self.word_ids.get(token, self.nothing) << 32 | fnv1a(token) & 0xFFFFFFFF
        if len(self._pieces) >= CACHE_LIMIT:
            self._pieces.clear()
        self._pieces[piece] = packed
        return packed

    def _tokens(self, data: np.ndarray, token_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Word row and signed hash of every token; each distinct token is looked up once per batch."""
        # a token runs to the next token's start (its trailing spaces are stripped once per distinct piece)
        pieces = pa.LargeStringArray.from_buffers(
            len(token_starts), pa.py_buffer(np.append(token_starts, len(data)).astype(np.int64)), pa.py_buffer(data))
        encoded = pc.dictionary_encode(pieces)
        distinct = encoded.dictionary.to_pylist()
        cached = self._pieces.get
        packed = np.fromiter((cached(p) or self._packed(p) for p in distinct), dtype=np.int64, count=len(distinct))
        packed = np.take(packed, encoded.indices.to_numpy(zero_copy_only=False))
        return packed >> 32, (packed & 0xFFFFFFFF).astype(np.uint32).view(np.int32).astype(np.int64)

    def logits(self, data: np.ndarray, token_starts: np.ndarray, window_bounds: np.ndarray) -> np.ndarray:
        """(windows, labels) logits. `data`: the views' bytes, tokens separated by runs of spaces;
        `token_starts`: first byte of every token, in order; window k holds tokens
        `window_bounds[k]:window_bounds[k + 1]` (possibly none)."""
        word_row, word_hash = self._tokens(data, token_starts)
        # each window as fastText reads it: its tokens, then the end-of-line token
        n_windows = len(window_bounds) - 1
        ends = window_bounds[1:]
        word_row = np.insert(word_row, ends, self.eos_row)
        word_hash = np.insert(word_hash, ends, self.eos_hash)
        starts = window_bounds[:-1] + np.arange(n_windows)
        lengths = np.diff(window_bounds) + 1
        left = np.repeat(starts + lengths, lengths) - np.arange(len(word_row))  # tokens from each to its window's end
        per_token = np.take(self.rows, word_row, axis=0)  # np.take: ~4x faster than fancy indexing here
        inputs = (word_row != self.nothing).astype(np.int64)
        chain = word_hash.astype(np.uint64)
        for n in range(2, self.word_ngrams + 1):  # the n-gram each token starts, hashed as fastText does
            with np.errstate(over="ignore"):  # 64-bit wrap-around of sign-extended hashes
                chain = chain[:-1] * NGRAM_MULTIPLIER + word_hash[n - 1:].astype(np.uint64)
            row = (chain % np.uint64(self.bucket)).astype(np.int64) + self.n_words
            valid = left[: len(row)] >= n
            per_token[: len(row)] += np.take(self.rows, np.where(valid, row, self.nothing), axis=0)
            inputs[: len(row)] += valid
        logits = np.add.reduceat(per_token, starts, axis=0) / np.add.reduceat(inputs, starts)[:, None]
        logits[:, self.unseen] = -np.inf
        return logits
