"""Training lines placed by the labeler's evidence quotes.

A behavior is a local event in a long page. With windows (`window_words` > 0) and evidence, a
labeled document becomes half-overlapping windows of `window_words` tokens, each positive for a
behavior where one of the labeler's quotes for it has its middle, plus each quote as a line of its
own (the cleanest positive example). A document with a positive behavior but no quote found in its
text is one line, the whole document, with its document labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate.linear import Corpus
from curate.schema import BEHAVIORS


def window_starts(n_words: int, words: int, stride: int) -> list[int]:
    """First word of each window of `words` words every `stride` words; [0] (the whole text)
    when `words` is 0 or the text is not longer than one window."""
    if words <= 0 or n_words <= words:
        return [0]
    return list(range(0, n_words - words + stride, stride))


def _find(haystack: np.ndarray, needle: np.ndarray) -> int:
    """First index of `needle` as a contiguous run in `haystack`, or -1."""
    if len(needle) == 0 or len(needle) > len(haystack):
        return -1
    for i in np.flatnonzero(haystack[: len(haystack) - len(needle) + 1] == needle[0]):
        if np.array_equal(haystack[i: i + len(needle)], needle):
            return int(i)
    return -1


@dataclass
class Lines:
    """Training lines as token positions of a `Corpus`: line k is
    `positions[bounds[k]:bounds[k + 1]]`, with its labels (lines, behaviors) and its document."""
    positions: np.ndarray
    bounds: np.ndarray
    labels: np.ndarray
    document: np.ndarray
    evidence_docs: int

    def texts(self, corpus: Corpus) -> list[str]:
        """Each line's tokens joined by spaces."""
        return [" ".join(corpus.tokens[t] for t in corpus.token_id[self.positions[a:b]])
                for a, b in zip(self.bounds[:-1], self.bounds[1:])]


def evidence_lines(corpus: Corpus, n_docs: int, positive: np.ndarray, quotes: list[list[tuple[int, int]]],
                   window_words: int, use_evidence: bool) -> Lines:
    """Training lines of the first `n_docs` texts of `corpus` (labels `positive`); `quotes[i]`
    lists (behavior index, corpus text index) of document i's evidence quotes."""
    positions, lengths, labels, document, evidence_docs = [], [], [], [], 0
    for i in range(n_docs):
        first, end = corpus.first_token[i], corpus.first_token[i + 1]
        ids = corpus.token_id[first:end]
        found = []  # (behavior, token index of the quote's middle, corpus text of the quote)
        for j, q in quotes[i] if window_words and use_evidence else []:
            q_first, q_end = corpus.first_token[q], corpus.first_token[q + 1]
            at = _find(ids, corpus.token_id[q_first:q_end])
            if at >= 0:
                found.append((j, at + (q_end - q_first) // 2, q))
        if not window_words or not use_evidence or any(positive[i, j] and all(f[0] != j for f in found)
                                                       for j in range(len(BEHAVIORS))):
            spans = [(first, end, positive[i])]
        else:
            evidence_docs += 1
            spans = []
            for a in window_starts(end - first, window_words, max(1, window_words // 2)):
                label = np.zeros(len(BEHAVIORS), dtype=bool)
                label[[j for j, middle, _ in found if a <= middle < a + window_words]] = True
                spans.append((first + a, min(first + a + window_words, end), label))
            for j, _, q in found:
                label = np.zeros(len(BEHAVIORS), dtype=bool)
                label[j] = True
                spans.append((corpus.first_token[q], corpus.first_token[q + 1], label))
        for a, b, label in spans:
            positions.append(np.arange(a, b))
            lengths.append(b - a)
            labels.append(label)
            document.append(i)
    return Lines(np.concatenate(positions).astype(np.int64), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                 np.array(labels, dtype=bool).reshape(-1, len(BEHAVIORS)), np.array(document, dtype=np.int64),
                 evidence_docs)
