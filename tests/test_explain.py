"""What the classifier sees: window spans in the original text (`curate.views.window_spans`) and the
report's examples page (`curate.explain`) on a real small run, read back as a parser and headless
Chromium read it."""

from __future__ import annotations

import json
import random
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.classifier import BehaviorClassifier
from curate.explain import CONTEXT_CHARS, EXAMPLES_FILE, MAX_WINDOW_CHARS, TOP_N, write_examples
from curate.io import iter_readable, read_json
from curate.layout import Layout
from curate.schema import BEHAVIORS, ID, TEXT
from curate.score import load_scores
from curate.views import (
    FASTTEXT_WHITESPACE, classifier_texts, classifier_tokens, token_starts, window_bounds, window_spans,
)
from tests.conftest import BUNDLED_DOCS, BUNDLED_LABELS
from tests.helpers import chromium, pixel_stats, run_curate, write_job

HOSTILE_URL = "javascript:alert(1)//\"><script>alert('url')</script>"
HOSTILE = "Check: 2 + 2 = 4 <script>document.title='pwned'</script> so </mark></div></article> x < y & z. "
EDGE_TEXTS = [
    "", " \n\t ", "x=2,$\\frac{a}{b}$\\alpha", "\\\\a\\b", "é中文 ((x)) 😀 done.", "a\ud800b c \udfff",
    "__label__x __label__ y", "A\x00B\x0bC\x0cD\rE", "$$", "end with a symbol?", "?start", "ÀÉ 1234 AbC",
]
WHITESPACE = set(FASTTEXT_WHITESPACE.decode())


def real_texts(k: int, seed: int = 0) -> list[str]:
    """`k` texts drawn (seeded) from the bundled documents and reference labels, and the edge cases."""
    files = [*sorted(BUNDLED_DOCS.glob("*.parquet")), BUNDLED_LABELS]
    texts = [t for f in files for t in pq.read_table(f, columns=[TEXT])[TEXT].to_pylist()]
    return random.Random(seed).sample(texts, k) + EDGE_TEXTS


@pytest.mark.parametrize("normalization", ["math", "plain"])
@pytest.mark.parametrize("words", [0, 7, 100])
def test_each_window_span_views_as_exactly_that_windows_tokens(normalization, words):
    texts = real_texts(150)
    spans, owner = window_spans(texts, normalization, words)
    _, _, first_token = token_starts(texts, normalization)
    assert np.array_equal(owner, window_bounds(first_token, words)[1])  # the scorer's windows, in its order
    tokens = [classifier_tokens(view) for view in classifier_texts(texts, normalization)]
    rank = np.arange(len(owner)) - np.searchsorted(owner, owner)
    for (start, end), t, r in zip(spans.tolist(), owner.tolist(), rank.tolist()):
        expected = tokens[t] if words == 0 else tokens[t][r * words:(r + 1) * words]
        piece = texts[t][start:end]
        assert classifier_tokens(classifier_texts([piece], normalization)[0]) == expected, (t, r, piece[:80])
        if expected:  # tight: the span starts and ends on a token character
            assert piece[0] not in WHITESPACE and piece[-1] not in WHITESPACE, (t, r, piece[:80])
        else:
            assert start == end == 0
    for t in range(len(texts)):  # a text's windows follow each other without overlapping
        own = spans[owner == t]
        assert np.all(own[1:, 0] >= own[:-1, 1]) and np.all(own[:, 1] <= len(texts[t]))


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """A real small run: few epochs on the reference labels, scoring the bundled documents and three
    hostile ones (HTML, a script, a closing mark in the text; a javascript: url; a 20k-character token)."""
    tmp = tmp_path_factory.mktemp("explain")
    hostile = [{"url": HOSTILE_URL, "text": HOSTILE}, {"url": "https://example.org/<b>long</b>", "text": HOSTILE * 60},
               {"url": "https://example.org/huge-token", "text": HOSTILE + "a" * 20_000 + " " + HOSTILE}]
    (tmp / "hostile.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in hostile))
    job = write_job(tmp / "job.yaml", name="explain <test>", output_dir=str(tmp / "out"),
                    input={"paths": [str(BUNDLED_DOCS), str(tmp / "hostile.jsonl")]},
                    train={"labels": str(BUNDLED_LABELS), "epoch": 5, "cv_folds": 2},
                    filters={"dedup": {"enabled": False}}, mix={"token_budget": 300_000})
    result = run_curate("run", job)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "out"


class ExamplesPage(HTMLParser):
    """The examples page as a browser parses it: per behavior section its articles, each with its
    attributes, its mark's attributes and its text in pieces (before, mark, after; elided spans apart)."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, list[dict]] = {}
        self.start_tags: dict[str, int] = {}
        self.title = ""
        self._section = self._article = self._place = None
        self._in_title = self._in_elided = False
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.start_tags[tag] = self.start_tags.get(tag, 0) + 1
        if tag == "title":
            self._in_title = True
        elif tag == "section":
            self._section = self.sections.setdefault(attrs["id"], [])
        elif tag == "article":
            self._article = {"attrs": attrs, "mark": None, "before": "", "window": "", "after": "", "elided": []}
            self._section.append(self._article)
        elif tag == "div" and attrs.get("class") == "text":
            self._place = "before"
        elif tag == "mark":
            self._article["mark"], self._place = attrs, "window"
        elif tag == "span" and attrs.get("class") == "elided":
            self._in_elided = True
            self._article["elided"].append((self._place, ""))

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag == "mark":
            self._place = "after"
        elif tag == "div":
            self._place = None
        elif tag == "span":
            self._in_elided = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif self._in_elided:
            place, text = self._article["elided"][-1]
            self._article["elided"][-1] = (place, text + data)
        elif self._place is not None:
            self._article[self._place] += data


def read_page(path: Path) -> str:
    """A page's characters as written (no newline translation: documents hold \\r\\n)."""
    return path.read_bytes().decode("utf-8")


def documents_by_id(out: Path) -> dict[str, str]:
    files = read_json(Layout(out).stats("score"))["input_files"]
    return {doc[ID]: doc[TEXT] for _, _, doc in iter_readable(files) if isinstance(doc, dict)}


def elided_count(piece: str) -> int:
    """The characters an elision marker ("[… 1,234 characters …]") says are left out."""
    return int(re.fullmatch(r"\[… ([\d,]+) characters …\]", piece).group(1).replace(",", ""))


def check_article(article: dict, text: str, model: BehaviorClassifier, behavior: int) -> None:
    """The highlighted span is the document's window of highest probability; re-scored alone it is one
    window with the probability shown; the text around it is the document's, elided beyond the context."""
    start, end = int(article["mark"]["data-start"]), int(article["mark"]["data-end"])
    shown = float(article["mark"]["data-window-probability"])
    column = model.window_model_columns.start + behavior
    probs, owner = model.window_probabilities([text[start:end]])
    assert len(owner) == 1 and probs[0, column] == pytest.approx(shown, abs=1e-6)
    all_windows, _ = model.window_probabilities([text])
    assert shown == pytest.approx(all_windows[:, column].max(), abs=1e-12)
    assert model.predict([text])[0, behavior] == pytest.approx(float(article["attrs"]["data-probability"]), abs=1e-6)
    elided = dict(article["elided"])
    if "window" in elided:  # a window longer than MAX_WINDOW_CHARS: its two ends
        half = MAX_WINDOW_CHARS // 2
        assert article["window"] == text[start:start + half] + text[end - half:end]
        assert elided_count(elided["window"]) == end - start - 2 * half
    else:
        assert article["window"] == text[start:end]
    shown_from = elided_count(elided["before"]) if "before" in elided else 0
    shown_to = len(text) - (elided_count(elided["after"]) if "after" in elided else 0)
    assert shown_from == max(0, start - CONTEXT_CHARS) and shown_to == min(len(text), end + CONTEXT_CHARS)
    assert article["before"] == text[shown_from:start] and article["after"] == text[end:shown_to]


def test_page_lists_the_top_documents_of_each_behavior_as_in_the_scores_table(output):
    page = ExamplesPage(read_page(output / "report" / EXAMPLES_FILE))
    table = pq.read_table(output / "scores")
    assert list(page.sections) == list(BEHAVIORS)
    for behavior, articles in page.sections.items():
        p = table[f"p_{behavior}"].to_numpy().astype(np.float64)
        listed = [(a["attrs"]["data-id"], float(a["attrs"]["data-probability"])) for a in articles]
        assert len(listed) == TOP_N
        assert [q for _, q in listed] == sorted(p, reverse=True)[:TOP_N]  # descending, the table's top
        scored = dict(zip(table[ID].to_pylist(), p))
        assert all(scored[doc_id] == q for doc_id, q in listed)
        assert len({doc_id for doc_id, _ in listed}) == TOP_N


def test_highlighted_window_rescored_alone_gives_the_probability_shown(output):
    model = BehaviorClassifier.load(output / "classifier" / "model.bin")
    texts = documents_by_id(output)
    page = ExamplesPage(read_page(output / "report" / EXAMPLES_FILE))
    for j, behavior in enumerate(BEHAVIORS):
        for article in page.sections[behavior]:
            check_article(article, texts[article["attrs"]["data-id"]], model, j)


def test_document_text_and_urls_are_escaped(output, tmp_path):
    """Every scored document on one page: each highlighted window checks out, and the hostile
    documents' HTML and script stay text."""
    layout = Layout(output)
    table = load_scores(layout.scores_dir)
    result = write_examples(layout, tmp_path / EXAMPLES_FILE, table, "all <documents>", n=table.num_rows)
    assert result["documents"] == {b: table.num_rows for b in BEHAVIORS} and result["notes"] == []
    raw = read_page(tmp_path / EXAMPLES_FILE)
    page = ExamplesPage(raw)
    assert "script" not in page.start_tags and page.title == "all <documents>: top documents"
    articles = [a for section in page.sections.values() for a in section]
    assert page.start_tags["mark"] == page.start_tags["article"] == len(articles) == 4 * table.num_rows
    model, texts = BehaviorClassifier.load(layout.model_file), documents_by_id(output)
    for j, behavior in enumerate(BEHAVIORS):
        for article in page.sections[behavior]:
            check_article(article, texts[article["attrs"]["data-id"]], model, j)
    hostile = [(j, a) for j, b in enumerate(BEHAVIORS) for a in page.sections[b]
               if HOSTILE in texts[a["attrs"]["data-id"]]]
    assert len(hostile) == 3 * len(BEHAVIORS)
    assert any(dict(a["elided"]).get("window") for _, a in hostile)  # the huge token's window, cut
    assert any("</mark>" in a["window"] for _, a in hostile) and any("<script>" in a["after"] for _, a in hostile)
    assert 'href="javascript' not in raw.lower() and "<script" not in raw.lower()
    dom = chromium(tmp_path / EXAMPLES_FILE, tmp_path, "--dump-dom").stdout
    assert dom.count("<mark ") == len(articles) and "<script" not in dom and "pwned" not in dom.split("</title>")[0]


def test_examples_page_is_linked_and_renders_in_headless_chromium(output, tmp_path):
    index = (output / "report" / "index.html").read_text()
    assert f'<a href="{EXAMPLES_FILE}">' in index
    shot = tmp_path / "examples.png"
    chromium(output / "report" / EXAMPLES_FILE, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    size, colours, inked = pixel_stats(shot)
    assert size == (1200, 1600) and colours > 100 and inked > 0.05, (colours, inked)
    dom = chromium(output / "report" / EXAMPLES_FILE, tmp_path, "--dump-dom").stdout
    assert dom.count("<mark ") == TOP_N * len(BEHAVIORS)


def test_report_without_the_model_names_the_examples_as_not_drawn(output, tmp_path):
    shutil.copytree(output / "scores", tmp_path / "scores")
    result = run_curate("report", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"not drawn: top documents per behavior: no classifier model {tmp_path / 'classifier' / 'model.bin'}" \
        in result.stderr
    assert not (tmp_path / "report" / EXAMPLES_FILE).exists()
