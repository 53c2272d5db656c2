"""What the behavior classifier reads: text views, their tokens and the scoring windows.

A view is computed on the UTF-8 bytes of a whole batch at once (`bytes.translate` tables and one
numpy scatter, no per-document Python): fastText's whitespace characters become spaces and, for the
`math` view, ASCII letters are lowercased, digits 1-9 become 0, and LaTeX commands and
math/punctuation symbols become tokens of their own. Only ASCII bytes are rewritten and only spaces
are inserted, so the UTF-8 stays valid. Tokens are the runs of non-space bytes, exactly as fastText
splits a line, so training lines built from `classifier_tokens` and the scorer's windows
(`token_starts`, `window_bounds`) give fastText the same tokens.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SPACE = ord(" ")
FASTTEXT_WHITESPACE = b" \n\r\t\v\f\0"  # the characters fastText splits words on
MATH_SYMBOLS = b"$^_{}()=+-*/<>|[],.;:!?"  # each becomes a token of its own in the math view
NORMALIZATIONS = {  # name -> what it does (written into the model card)
    "plain": "fastText's whitespace characters (space, newline, tab, CR, VT, FF, NUL) -> spaces",
    "math": "fastText's whitespace characters -> spaces; ASCII letters lowercased; digits 1-9 -> 0; a space "
            "either side of each of $^_{}()=+-*/<>|[],.;:!? and before each backslash, so that x=2, $x$ "
            "and \\frac{a}{b} share tokens with other formulas",
    "words": "ASCII letters lowercased; every other ASCII character (digits, punctuation, math symbols, "
             "backslashes, whitespace) -> space: words only",
    "alnum": "ASCII letters lowercased; every other ASCII character except digits -> space",
}


def _byte_tables(normalization: str) -> tuple[bytes, bytes]:
    """(byte -> view byte, byte -> bytes it takes in the view) tables for `bytes.translate`: 1 for
    most bytes, 3 for a math symbol (a space either side), 2 for a backslash (a space before)."""
    mapping = bytearray(range(256))
    sizes = bytearray([1] * 256)
    for byte in FASTTEXT_WHITESPACE:
        mapping[byte] = SPACE
    if normalization == "math":
        for byte in range(ord("A"), ord("Z") + 1):
            mapping[byte] = byte - ord("A") + ord("a")
        for byte in range(ord("1"), ord("9") + 1):
            mapping[byte] = ord("0")
        for byte in MATH_SYMBOLS:
            sizes[byte] = 3
        sizes[ord("\\")] = 2  # \frac -> " \frac": a command starts a token
    elif normalization in ("words", "alnum"):
        for byte in range(128):
            if chr(byte).isalpha():
                mapping[byte] = ord(chr(byte).lower())
            elif not (normalization == "alnum" and chr(byte).isdigit()):
                mapping[byte] = SPACE
    elif normalization != "plain":
        raise ValueError(f"unknown normalization {normalization!r} (expected one of {', '.join(NORMALIZATIONS)})")
    return bytes(mapping), bytes(sizes)


_TABLES = {n: _byte_tables(n) for n in NORMALIZATIONS}
LABEL_PREFIX = "__label__"


def _utf8(texts: list[str], defuse_labels: bool) -> tuple[bytes, np.ndarray]:
    """The UTF-8 bytes of a batch (a lone surrogate as one "?") and the (n + 1) offsets of each text in
    them; `defuse_labels` turns fastText's label prefix into a word (what the plain view does)."""
    try:
        array = pa.array(texts, type=pa.large_string())
    except UnicodeEncodeError:  # a lone surrogate (e.g. a JSON "\ud800" escape) has no UTF-8 form
        array = pa.array([t.encode("utf-8", "replace").decode("utf-8") for t in texts], type=pa.large_string())
    if defuse_labels:  # fastText would read a word starting with __label__ as a label
        import pyarrow.compute as pc

        array = pc.replace_substring(array, LABEL_PREFIX, LABEL_PREFIX[1:])
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64, count=len(array) + 1, offset=array.offset * 8)
    raw = bytes(memoryview(data_buffer)[offsets[0]: offsets[-1]]) if data_buffer is not None else b""
    return raw, offsets - offsets[0]


def view_bytes(texts: list[str], normalization: str) -> tuple[np.ndarray, np.ndarray]:
    """The views of a batch as one uint8 buffer and the (n + 1) offsets of each view in it."""
    raw, offsets = _utf8(texts, defuse_labels=normalization == "plain")
    mapping, sizes = _TABLES[normalization]
    mapped = np.frombuffer(raw.translate(mapping), dtype=np.uint8)
    if normalization != "math":
        return mapped, offsets
    size = np.frombuffer(raw.translate(sizes), dtype=np.uint8)
    # end of each input byte's piece in the view (int32 while it fits: half the memory traffic)
    ends = np.cumsum(size, dtype=np.int32 if 3 * len(size) < 2**31 else np.int64)
    view_offsets = np.zeros(len(offsets), dtype=np.int64)
    view_offsets[1:] = np.where(offsets[1:] > 0, ends[np.maximum(offsets[1:] - 1, 0)] if len(ends) else 0, 0)
    view = np.full(int(ends[-1]) if len(ends) else 0, SPACE, dtype=np.uint8)
    ends -= 1
    ends -= size == 3  # a symbol sits before its trailing space
    view[ends] = mapped
    return view, view_offsets


def _strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.astype(np.int64)),
                                            pa.py_buffer(data)).to_pylist()


def classifier_texts(texts: list[str], normalization: str) -> list[str]:
    """The classifier's view of each text (see the module docstring); runs of spaces are kept."""
    data, offsets = view_bytes(texts, normalization)
    return _strings(data, offsets)


def classifier_tokens(view: str) -> list[str]:
    """The tokens fastText reads in a view."""
    return [t for t in view.split(" ") if t]


def classifier_text(text: str, normalization: str) -> str:
    """A view with its tokens joined by single spaces (training lines; locating evidence quotes)."""
    return " ".join(classifier_tokens(classifier_texts([text], normalization)[0]))


def token_starts(texts: list[str], normalization: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The views of a batch (`view_bytes`), the first byte of each of their tokens, and the
    (n + 1) index of each text's first token in that list (the total at the end)."""
    data, offsets = view_bytes(texts, normalization)
    is_token = data != SPACE
    after_space = np.ones(len(data), dtype=bool)
    after_space[1:] = ~is_token[:-1]
    after_space[offsets[1:-1][offsets[1:-1] < len(data)]] = True  # a text's first byte starts a token
    starts = np.flatnonzero(is_token & after_space)
    return data, starts, np.searchsorted(starts, offsets)


def window_bounds(first_token: np.ndarray, words: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive windows of `words` tokens over each text (one window per text when `words` is
    0, and for a text without tokens): window k holds tokens `bounds[k]:bounds[k + 1]`; also the
    text index of each window."""
    n_tokens = np.diff(first_token)
    n_windows = np.maximum(1, -(-n_tokens // words)) if words > 0 else np.ones(len(n_tokens), dtype=np.int64)
    owner = np.repeat(np.arange(len(n_tokens)), n_windows)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    starts = np.minimum(first_token[:-1][owner] + rank * max(words, 0), first_token[1:][owner])
    return np.append(starts, first_token[-1]), owner


def window_spans(texts: list[str], normalization: str, words: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each scoring window of a batch (those of `window_bounds` over `token_starts`, in the same
    order) lies in its original text: (windows, 2) character offsets [start, end) from the window's first
    token's first character to its last token's last one ((0, 0) for a text without tokens), and the text
    index of each window. The view of `text[start:end]` holds exactly the window's tokens.

    Worked out on the input bytes: a view token is a run of input bytes that are not whitespace, broken
    where the view puts a space (before a math symbol or backslash, after a math symbol) and at a text's
    ends; the label prefix the plain view defuses stays one token either way."""
    raw, offsets = _utf8(texts, defuse_labels=False)
    mapping, sizes = _TABLES[normalization]
    is_token = np.frombuffer(raw.translate(mapping), dtype=np.uint8) != SPACE
    size = np.frombuffer(raw.translate(sizes), dtype=np.uint8)
    space_before, space_after = size >= 2, size == 3  # what the math view inserts around a byte
    gap = np.ones(len(raw) + 1, dtype=bool)  # gap[i]: no token runs on from byte i - 1 to byte i
    gap[1:-1] = ~is_token[:-1] | ~is_token[1:] | space_after[:-1] | space_before[1:]
    gap[offsets] = True  # a token ends with its text
    token_begin = np.flatnonzero(is_token & gap[:-1])
    token_end = np.flatnonzero(is_token & gap[1:]) + 1
    bounds, owner = window_bounds(np.searchsorted(token_begin, offsets), words)
    text_start = offsets[:-1][owner]
    has_tokens = bounds[1:] > bounds[:-1]
    begin = np.where(has_tokens, np.append(token_begin, 0)[bounds[:-1]], text_start)  # the 0 after: no token
    end = np.where(has_tokens, np.append(token_end, 0)[bounds[1:] - 1], text_start)
    characters = np.zeros(len(raw) + 1, dtype=np.int64)  # characters before each byte: UTF-8 lead bytes so far
    np.cumsum((np.frombuffer(raw, dtype=np.uint8) & 0xC0) != 0x80, out=characters[1:])
    spans = np.column_stack([characters[begin], characters[end]]) - characters[text_start][:, None]
    return spans, owner
