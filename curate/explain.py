"""`report/examples.html`: what the classifier sees in the documents it scored highest.

Per behavior, the top documents of the scores table, read back from the scored input files (named in
`logs/score/stats.json`), their windows re-scored with the classifier in `classifier/`, and each text
shown with the window of highest probability for that behavior (the one that drove the noisy-or or max
score) highlighted: its span in the original text is `curate.views.window_spans`. Long texts are cut
to some context around the window. Every piece of document text and every url is escaped: web text
holds HTML and scripts.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.classifier import BehaviorClassifier
from curate.io import Dropped, iter_readable, read_json, write_text
from curate.layout import Layout
from curate.schema import BEHAVIORS, ID, PROB_COLUMNS, TEXT, URL
from curate.views import window_spans

EXAMPLES_FILE = "examples.html"
TOP_N = 5
CONTEXT_CHARS = 600  # characters of context shown either side of the window
MAX_WINDOW_CHARS = 6000  # a longer window (a run of huge tokens) is shown as its two ends
MISMATCH = 1e-4  # recomputed vs scored probability: above this, the scores came from another model or text


@dataclass(frozen=True)
class Example:
    """One of a behavior's top documents and the window that drove its score."""

    behavior: str
    doc_id: str
    probability: float  # the scores table's (calibrated) probability
    url: str | None = None
    text: str | None = None  # None: not found in the scored input files
    window: int = 0  # the highlighted window's index in the document
    windows: int = 0
    window_probability: float | None = None  # before calibration
    share: float | None = None  # the window's share of the document's noisy-or evidence, sum of -log(1 - p)
    span: tuple[int, int] = (0, 0)  # the window's characters in `text`


def missing(layout: Layout, table) -> str | None:
    """Why the examples cannot be drawn for this output folder (None: they can)."""
    if table is None:
        return f"no scores in {layout.scores_dir}"
    if not layout.model_file.exists():
        return f"no classifier model {layout.model_file}"
    if not layout.stats("score").exists():
        return f"no {layout.stats('score')} naming the scored input files"
    return None


def top_rows(table, n: int) -> dict[str, list[tuple[str, float]]]:
    """Per behavior, the (id, probability) of the `n` highest-scored rows, ties in table order."""
    ids = table.column(ID).to_pylist()
    top = {}
    for behavior, col in zip(BEHAVIORS, PROB_COLUMNS):
        p = table.column(col).to_numpy()
        top[behavior] = [(ids[i], float(p[i])) for i in np.argsort(-p, kind="stable")[:n]]
    return top


def read_documents(files: list[str], ids: set[str], errors: list[str]) -> list[dict]:
    """The documents of the input files whose id is in `ids` (every one, when an id repeats), in file
    order; files that cannot be read are named in `errors`."""
    return [doc for _, _, doc in iter_readable(files, on_error=lambda path, message, rows: errors.append(message))
            if not isinstance(doc, Dropped) and doc[ID] in ids]


@dataclass(frozen=True)
class Windows:
    """A batch of texts as the classifier reads it: each text's probabilities, and each window's
    probabilities and character span (the windows of one text are consecutive)."""

    document_probabilities: np.ndarray  # (texts, behaviors), calibrated
    probabilities: np.ndarray  # (windows, behaviors), before calibration
    spans: np.ndarray  # (windows, 2)
    first: np.ndarray  # (texts + 1): text i owns windows first[i]:first[i + 1]

    @classmethod
    def of(cls, model: BehaviorClassifier, texts: list[str]) -> Windows:
        probabilities, owner = model.window_probabilities(texts)
        probabilities = probabilities[:, model.window_model_columns]
        spans, span_owner = window_spans(texts, model.recipe["normalization"], model.recipe["window_words"])
        if not np.array_equal(owner, span_owner):
            raise ValueError("the classifier's windows are not those of curate.views.window_spans")
        return cls(model.predict(texts).astype(np.float64), probabilities, spans,
                   np.searchsorted(owner, np.arange(len(texts) + 1)))

    def example(self, text: int, behavior: int, doc: dict, probability: float) -> Example:
        """Document `doc` (text `text` of the batch) as an example of a behavior (its column), scored
        `probability`: its window of highest probability for the behavior, and that window's share of
        the document's noisy-or evidence (-log(1 - p) summed over its windows)."""
        lo, hi = self.first[text], self.first[text + 1]
        p = self.probabilities[lo:hi, behavior]
        evidence = -np.log1p(-np.clip(p, 0, 1 - 1e-9))
        best = int(np.argmax(p))
        return Example(BEHAVIORS[behavior], doc[ID], probability, url=doc[URL], text=doc[TEXT], window=best,
                       windows=int(hi - lo), window_probability=float(p[best]),
                       share=float(evidence[best] / evidence.sum()) if evidence.sum() > 0 else 1.0,
                       span=(int(self.spans[lo + best, 0]), int(self.spans[lo + best, 1])))


def explain(model: BehaviorClassifier, table, files: list[str], n: int = TOP_N) -> tuple[dict[str, list[Example]],
                                                                                          list[str]]:
    """Per behavior, its `n` top documents with their best window; and notes (unreadable files,
    documents not found, probabilities that differ now). Of documents sharing an id, the one whose
    probability now is closest to the scored one is shown."""
    top = top_rows(table, n)
    notes: list[str] = []
    docs = read_documents(files, {doc_id for rows in top.values() for doc_id, _ in rows}, notes)
    windows = Windows.of(model, [doc[TEXT] for doc in docs]) if docs else None
    same_id: dict[str, list[int]] = {}
    for i, doc in enumerate(docs):
        same_id.setdefault(doc[ID], []).append(i)
    examples: dict[str, list[Example]] = {}
    for j, behavior in enumerate(BEHAVIORS):
        examples[behavior] = []
        for doc_id, p in top[behavior]:
            if doc_id not in same_id:
                notes.append(f"{behavior}: {doc_id} (p {p:.4f}) is not in the scored input files any more")
                examples[behavior].append(Example(behavior, doc_id, p))
                continue
            i = min(same_id[doc_id], key=lambda k: abs(windows.document_probabilities[k, j] - p))
            now = float(windows.document_probabilities[i, j])
            if abs(now - p) > MISMATCH:
                notes.append(f"{behavior}: {doc_id} scored {p:.4f} but the classifier now gives {now:.4f}: "
                             "the scores were made by another model or text")
            examples[behavior].append(windows.example(i, j, docs[i], p))
    return examples, notes


def _escaped(text: str) -> str:
    return html.escape(text, quote=True)


def _elided(characters: int) -> str:
    return f'<span class="elided">[… {characters:,} characters …]</span>'


def text_html(text: str, span: tuple[int, int], window_probability: float, context: int = CONTEXT_CHARS) -> str:
    """A document's text, escaped, with the window `span` in a `<mark>` and at most `context`
    characters shown either side of it (the rest named as elided)."""
    text = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate has no UTF-8 form: one "?"
    start, end = span
    shown_from, shown_to = max(0, start - context), min(len(text), end + context)
    if end - start > MAX_WINDOW_CHARS:
        half = MAX_WINDOW_CHARS // 2
        window = _escaped(text[start:start + half]) + _elided(end - start - 2 * half) + _escaped(text[end - half:end])
    else:
        window = _escaped(text[start:end])
    return "".join([
        _elided(shown_from) if shown_from else "", _escaped(text[shown_from:start]),
        f'<mark data-start="{start}" data-end="{end}" data-window-probability="{window_probability!r}">{window}</mark>',
        _escaped(text[end:shown_to]), _elided(len(text) - shown_to) if shown_to < len(text) else "",
    ])


def _url_html(example: Example) -> str:
    label = _escaped(example.url or example.doc_id)
    if example.url and example.url.lower().startswith(("http://", "https://")):  # never a javascript: link
        return f'<a href="{_escaped(example.url)}" rel="nofollow noopener noreferrer">{label}</a>'
    return label


def example_html(rank: int, example: Example, recipe: dict) -> str:
    """One document of a behavior's list: its url, probabilities and highlighted text."""
    col = f"p_{example.behavior}"
    head = f"<h3>{rank}. {_url_html(example)}</h3>"
    attributes = f'class="example" data-id="{_escaped(example.doc_id)}" data-probability="{example.probability!r}"'
    if example.text is None:
        return (f'<article {attributes}>{head}<p class="meta">{col} {example.probability:.4f}; the document is '
                "not in the scored input files any more</p></article>")
    window = (f"window {example.window + 1} of {example.windows} ({recipe['window_words']} classifier tokens)"
              if recipe["window_words"] else "the whole document (one window)")
    meta = (f"{col} {example.probability:.4f} (scores) · highlighted: {window}, probability "
            f"{example.window_probability:.4f} before calibration")
    if recipe.get("fit") == "linear" and recipe["window_words"]:
        meta += " by the window model (calibrated together with the whole-document model)"
    if recipe.get("aggregate") == "noisy_or" and example.windows > 1:
        meta += f", {100 * example.share:.0f}% of the document's noisy-or evidence"
    meta += f" · {len(example.text):,} characters"
    return (f"<article {attributes}>{head}<p class=\"meta\">{_escaped(meta)}</p>"
            f'<div class="text">{text_html(example.text, example.span, example.window_probability)}</div></article>')


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px}.meta{color:#444;font-size:90%}"
         ".text{white-space:pre-wrap;font-family:monospace;font-size:85%;border:1px solid #ccc;padding:8px;"
         "overflow-wrap:anywhere;background:#fafafa}mark{background:#ffe066}.elided{color:#888;font-style:italic}"
         "article{margin-bottom:2em}")


def examples_page(name: str, examples: dict[str, list[Example]], notes: list[str], recipe: dict,
                  documents: int) -> str:
    """The examples page: per behavior its top documents, the window that drove each score highlighted."""
    n = max((len(v) for v in examples.values()), default=0)
    how = (f"windows of {recipe['window_words']} classifier tokens of the {recipe['normalization']} view, "
           f"aggregated by {recipe.get('aggregate', 'max')}" if recipe["window_words"]
           else f"the whole {recipe['normalization']} view of each document")
    intro = (f"The {n} documents with the highest probability of each behavior among {documents:,} scored. The "
             f"classifier reads {how}; the highlighted window is the one with the highest probability for that "
             f"behavior, shown with up to {CONTEXT_CHARS:,} characters of context either side.")
    parts = ['<p><a href="index.html">← report</a></p>', f"<h1>{_escaped(name)}: top documents per behavior</h1>",
             f"<p>{_escaped(intro)}</p>",
             "<ul>" + "".join(f'<li><a href="#{b}">{b}</a></li>' for b in examples) + "</ul>"]
    if notes:
        parts += ["<h2>Notes</h2><ul>" + "".join(f"<li>{_escaped(note)}</li>" for note in notes) + "</ul>"]
    for behavior, items in examples.items():
        parts.append(f'<section id="{behavior}"><h2>{behavior}</h2>'
                     + "".join(example_html(rank, e, recipe) for rank, e in enumerate(items, 1)) + "</section>")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_escaped(name)}: top documents</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def write_examples(layout: Layout, path: Path, table, name: str, n: int = TOP_N) -> dict:
    """Write the examples page of an output folder (`missing` says what it needs) to `path`; returns
    the path, the documents shown per behavior and the notes."""
    model = BehaviorClassifier.load(layout.model_file)
    files = read_json(layout.stats("score"))["input_files"]
    examples, notes = explain(model, table, files, n)
    write_text(examples_page(name, examples, notes, model.recipe, table.num_rows), path)
    return {"path": str(path), "documents": {b: len(v) for b, v in examples.items()}, "notes": notes}
