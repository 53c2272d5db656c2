"""fastText's supervised arithmetic for every window of a batch at once, in numpy.

A fastText classifier is linear up to its output sigmoid: a line's logit for a label is the mean,
over the line's input rows (each known word, each word-n-gram bucket, the end-of-line token), of
that row's dot product with the label's output vector. So the products are computed once per
input row at load time (`rows x labels`), every token of a batch contributes its word row and the
buckets of the n-grams it starts (`line_rows`), and a window's logits are one `np.add.reduceat`
over its rows. Python runs once per distinct token of a batch (a cached lookup) and once per
document for the presence sums, never per window: asking fastText window by window cost ~14 µs of
result conversion per window, more than the model itself.

Hashing and bucketing follow fastText's dictionary (FNV-1a over the UTF-8 bytes, bytes sign-
extended; n-gram bucket `((h1 * 116049371 + h2) * 116049371 + ...) mod bucket` in 64 bits) and the end-of-line token
that `predict` appends, so the logits equal `get_sentence_vector(line) @ output_matrix.T`
(tests/test_train.py checks it). The probability is the exact sigmoid of the logit; fastText's
own `predict` reads a 512-step sigmoid table, so its numbers differ by up to ~0.01.

Besides a window's mean, `WindowLogits.presence` gives each document the sum of its *distinct*
input rows divided by (their number) ** power: a linear model on the binary presence of words and
n-grams, normalized like an L2-normalized bag of words (power 0.5). That is what `curate.linear`
fits for the document labels.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EOS = "</s>"
NGRAM_MULTIPLIER = np.uint64(116049371)
SHORT_TOKEN = 48  # bytes: longer tokens (rare) are hashed one by one in Python
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt(3) parameters


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Let glibc serve allocations up to `mmap_threshold` bytes from its heap and keep up to
    `trim_threshold` bytes of freed heap for reuse, in this process. Scoring allocates and frees
    arrays of a few MB per batch; by default glibc maps each one afresh and unmaps it when freed, and
    the page faults cost about a third more CPU than the arithmetic (benchmarks/README.md). False
    where there is no glibc `mallopt` (macOS, musl's does nothing)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def fnv1a(token: str) -> int:
    """fastText's 32-bit word hash, as the signed int32 its dictionary stores."""
    h = 2166136261
    for byte in token.encode("utf-8"):
        h = ((h ^ (byte | 0xFFFFFF00 if byte >= 0x80 else byte)) * 16777619) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def fnv1a_array(strings: pa.Array) -> np.ndarray:
    """`fnv1a` of every string of a (large) string array, as int64: one numpy pass per byte position
    over the strings that long, in order of length; the few longer than SHORT_TOKEN in Python."""
    if len(strings) == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[strings.offset: strings.offset + len(strings) + 1]
    data = strings.buffers()[2]
    signed = (np.frombuffer(data, dtype=np.int8) if data is not None else np.zeros(0, np.int8)).astype(np.int32)
    signed = signed.view(np.uint32)  # each byte sign-extended, as fastText's uint32_t(int8_t(c))
    lengths = np.minimum(np.diff(offsets), SHORT_TOKEN + 1)
    order = np.argsort(-lengths, kind="stable")
    longer_than = len(strings) - np.cumsum(np.bincount(lengths, minlength=SHORT_TOKEN + 2))  # [j]: strings > j bytes
    h = np.full(len(strings), 2166136261, dtype=np.uint32)
    for j in range(min(int(lengths.max(initial=0)), SHORT_TOKEN)):
        active = order[: longer_than[j]]
        h[active] = (h[active] ^ signed[offsets[active] + j]) * np.uint32(16777619)
    hashes = h.view(np.int32).astype(np.int64)
    for i in np.flatnonzero(lengths > SHORT_TOKEN).tolist():
        hashes[i] = fnv1a(strings[i].as_py())
    return hashes


def line_rows(word_row: np.ndarray, word_hash: np.ndarray, line_bounds: np.ndarray, *, word_ngrams: int,
              bucket: int, n_words: int, eos_row: int, eos_hash: int, nothing: int) -> tuple[np.ndarray, np.ndarray]:
    """The input rows of lines as fastText's dictionary makes them (`getLine`, no subwords).

    `word_row`, `word_hash`: each token's row (`nothing` for a word outside the vocabulary) and
    signed hash; line k holds tokens `line_bounds[k]:line_bounds[k + 1]`. Each line gets its
    end-of-line token appended. Returns `rows` (word_ngrams, tokens + lines): column t holds the
    word row of position t and the buckets of the 2..word_ngrams-grams starting there (`nothing`
    where the n-gram would leave its line); and the first position of each line."""
    n_lines = len(line_bounds) - 1
    ends = line_bounds[1:]
    word_row = np.insert(word_row, ends, eos_row)
    word_hash = np.insert(word_hash, ends, eos_hash)
    starts = line_bounds[:-1] + np.arange(n_lines)
    lengths = np.diff(line_bounds) + 1
    left = np.repeat(starts + lengths, lengths) - np.arange(len(word_row))  # positions from each to its line's end
    rows = np.empty((word_ngrams, len(word_row)), dtype=np.int64)
    rows[0] = word_row
    hashes = word_hash.view(np.uint64)  # sign-extended int64 -> the same bits as uint64, no copy
    chain = hashes
    for n in range(2, word_ngrams + 1):  # the n-gram each position starts, hashed as fastText does
        with np.errstate(over="ignore"):  # 64-bit wrap-around of sign-extended hashes
            chain = chain[:-1] * NGRAM_MULTIPLIER + hashes[n - 1:]
        row = (chain % np.uint64(bucket)).view(np.int64) + n_words
        rows[n - 1, : len(row)] = np.where(left[: len(row)] >= n, row, nothing)
        rows[n - 1, len(row):] = nothing
    return rows, starts


def distinct_sums(table: np.ndarray, rows: np.ndarray, bounds: np.ndarray, nothing: int,
                  owner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each group k of positions `bounds[k]:bounds[k + 1]` of `rows` (word_ngrams, positions),
    at least one position each: the sum of `table` over its distinct rows other than `nothing`
    (whose table row must be zeros), and how many there are. `owner`: scratch space of len(table)
    integers."""
    owner = np.empty(len(table), dtype=np.int64) if owner is None else owner
    n, width = rows.shape
    flat = rows.ravel()  # row-major: level l of position t is flat[l * width + t]
    position = np.arange(len(flat))
    first = np.empty(len(flat), dtype=bool)
    levels = range(0, len(flat), width)
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        for level in levels:  # each distinct row keeps the position of one of its occurrences (whichever)
            owner[flat[level + a: level + b]] = position[level + a: level + b]
        for level in levels:  # so exactly one occurrence of each distinct row is marked
            first[level + a: level + b] = owner[flat[level + a: level + b]] == position[level + a: level + b]
    first = first.reshape(n, width)
    counts = np.zeros(len(bounds) - 1, dtype=np.int64)
    sums = np.zeros((len(bounds) - 1, table.shape[1]), dtype=np.float32)
    for level in range(n):
        marked = first[level]
        cumulative = np.concatenate([[0], np.cumsum(marked)])[bounds]
        counts += np.diff(cumulative)
        values = np.take(table, rows[level][marked], axis=0)
        nonempty = np.diff(cumulative) > 0
        sums[nonempty] += np.add.reduceat(values, cumulative[:-1][nonempty], axis=0)  # float32, as fastText's sums
    is_nothing = np.flatnonzero(first & (rows == nothing)) % width  # positions of the marked `nothing`s
    counts -= np.bincount(np.searchsorted(bounds, is_nothing, side="right") - 1, minlength=len(counts))
    return sums.astype(np.float64), counts


class WindowLogits:
    """The per-input-row logit table of one fastText supervised model (one-vs-all loss, word
    n-grams, no subwords: what `curate train` writes) for the labels asked for, the token lookups
    it needs, and the window (mean) and document (distinct-row presence) logits built from it."""

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
        table = input_matrix @ output.T  # float32, as fastText computes (half the memory traffic of float64)
        self.rows = np.vstack([table, np.zeros((1, len(labels)), dtype=np.float32)])  # last row: nothing (a word not in the vocabulary)
        self.nothing = len(self.rows) - 1
        self.vocabulary = pa.array(words, pa.large_string())
        self.eos_row, self.eos_hash = words.index(EOS), fnv1a(EOS)
        self._tables: dict[tuple, np.ndarray] = {}
        self._owner = np.empty(len(self.rows), dtype=np.int64)  # scratch space of `distinct_sums`
        keep_freed_memory()

    def _tokens(self, data: np.ndarray, token_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Word row and signed hash of every token; each distinct token is looked up once per batch
        (Arrow's hash-based dictionary encoding and set lookup, then `fnv1a_array`)."""
        # a token runs to the next token's start: its trailing spaces are stripped from the distinct pieces
        pieces = pa.LargeStringArray.from_buffers(
            len(token_starts), pa.py_buffer(np.append(token_starts, len(data)).astype(np.int64)), pa.py_buffer(data))
        encoded = pc.dictionary_encode(pieces)
        distinct = pc.utf8_rtrim(encoded.dictionary, characters=" ")
        row = pc.index_in(distinct, value_set=self.vocabulary).fill_null(self.nothing).to_numpy().astype(np.int64)
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        return np.take(row, indices), np.take(fnv1a_array(distinct), indices)

    def line_rows(self, data: np.ndarray, token_starts: np.ndarray, window_bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`line_rows` of the windows of a batch. `data`: the views' bytes, tokens separated by runs
        of spaces; `token_starts`: first byte of every token, in order; window k holds tokens
        `window_bounds[k]:window_bounds[k + 1]` (possibly none)."""
        word_row, word_hash = self._tokens(data, token_starts)
        return line_rows(word_row, word_hash, window_bounds, word_ngrams=self.word_ngrams, bucket=self.bucket,
                         n_words=self.n_words, eos_row=self.eos_row, eos_hash=self.eos_hash, nothing=self.nothing)

    def logits(self, data: np.ndarray, token_starts: np.ndarray, window_bounds: np.ndarray) -> np.ndarray:
        """(windows, labels) logits: fastText's, for each window read as a line."""
        rows, starts = self.line_rows(data, token_starts, window_bounds)
        return self.window_logits(rows, starts)

    def _table(self, columns: slice) -> tuple[np.ndarray, np.ndarray]:
        """The logit table of some labels (a contiguous copy, made once) and which of them are unseen."""
        key = (columns.start, columns.stop)
        if key not in self._tables:
            self._tables[key] = np.ascontiguousarray(self.rows[:, columns])
        return self._tables[key], self.unseen[columns]

    def window_logits(self, rows: np.ndarray, starts: np.ndarray, columns: slice = slice(None)) -> np.ndarray:
        """(lines, labels) logits of lines given by `line_rows`: the mean of their rows' logits
        (for the labels `columns`)."""
        table, unseen = self._table(columns)
        per_position = np.take(table, rows[0], axis=0)  # np.take: ~4x faster than fancy indexing here
        for more in rows[1:]:
            per_position += np.take(table, more, axis=0)
        inputs = (rows != self.nothing).sum(axis=0)
        logits = np.add.reduceat(per_position, starts, axis=0).astype(np.float64) / np.add.reduceat(inputs, starts)[:, None]
        logits[:, unseen] = -np.inf
        return logits

    def presence(self, rows: np.ndarray, starts: np.ndarray, first_window: np.ndarray, power: float,
                 columns: slice = slice(None)) -> np.ndarray:
        """(documents, labels) for the labels `columns`: for each document (windows
        `first_window[d]:first_window[d + 1]` of `line_rows`), the sum of its distinct rows'
        logits divided by their number ** `power`."""
        table, unseen = self._table(columns)
        bounds = np.append(starts, rows.shape[1])[first_window]
        sums, counts = distinct_sums(table, rows, bounds, self.nothing, self._owner)
        logits = sums / np.maximum(counts, 1)[:, None] ** power
        logits[:, unseen] = -np.inf
        return logits


def aggregate_windows(window_logits: np.ndarray, first_window: np.ndarray, how: str) -> np.ndarray:
    """(documents, labels) from (windows, labels) logits, document d owning windows
    `first_window[d]:first_window[d + 1]` (at least one): the logit of the noisy-or
    1 - prod(1 - p_window) (`noisy_or`), or the largest window logit (`max`)."""
    starts = first_window[:-1]
    if how == "max":
        return np.maximum.reduceat(window_logits, starts, axis=0)
    with np.errstate(divide="ignore"):
        total = np.add.reduceat(np.logaddexp(0, window_logits), starts, axis=0)  # -log prod(1 - p)
        return np.where(total > 30, total, np.log(np.expm1(total)))  # logit(1 - e^-total)
