"""Benchmark decontamination: find documents that share a long n-gram with an evaluation item.

Documents and evaluation items become lowercase word tokens (`curate.schema.word_tokens`), so
case, punctuation and whitespace do not hide a copy. Every n-gram (default 13 tokens) of each
item field is indexed; a document containing any of them is contaminated, and the report names
the items it matched. A field shorter than n tokens cannot match and is counted as `too_short`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import EvalSetConfig
from curate.io import Dropped, InputError, iter_rows
from curate.progress import Progress
from curate.schema import word_tokens

MAX_ITEMS_IN_DETAIL = 5


class EvalSetError(ValueError):
    """An evaluation set that cannot be read as configured (one-line message naming the file)."""


def _eval_rows(cfg: EvalSetConfig) -> list[dict]:
    columns = [*cfg.fields, *([cfg.id_field] if cfg.id_field else [])]
    if cfg.path.endswith(".parquet"):
        try:
            table = pq.read_table(cfg.path)
        except (pa.ArrowException, OSError) as e:
            raise EvalSetError(f"{cfg.path}: not a readable Parquet file: {str(e).splitlines()[0]}") from None
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise EvalSetError(f"{cfg.path}: no column {', '.join(map(repr, missing))} "
                               f"(columns: {', '.join(table.column_names)})")
        return table.select(columns).to_pylist()
    try:
        rows = list(iter_rows(cfg.path))
    except InputError as e:
        raise EvalSetError(str(e)) from None
    for row, record in enumerate(rows):
        if isinstance(record, Dropped):
            raise EvalSetError(record.message())
        missing = [c for c in columns if c not in record]
        if missing:
            raise EvalSetError(f"{cfg.path}: row {row}: no field {', '.join(map(repr, missing))}")
    return rows


def set_name(cfg: EvalSetConfig) -> str:
    """The name an evaluation set goes by in reports."""
    return cfg.name or Path(cfg.path).name.split(".")[0]


@dataclass
class EvalIndex:
    """Every n-gram of the evaluation items, mapped to the items (`set:item`) it occurs in."""

    ngram: int
    items_by_gram: dict[tuple[str, ...], set[str]] = field(default_factory=lambda: defaultdict(set))
    sets: list[dict] = field(default_factory=list)

    def add_set(self, cfg: EvalSetConfig) -> None:
        name = set_name(cfg)
        rows = _eval_rows(cfg)
        too_short = 0
        for row, record in enumerate(rows):
            item = f"{name}:{record[cfg.id_field] if cfg.id_field else row}"
            indexed = False
            for column in cfg.fields:
                tokens = word_tokens(str(record[column] or ""))
                for i in range(len(tokens) - self.ngram + 1):
                    self.items_by_gram[tuple(tokens[i:i + self.ngram])].add(item)
                    indexed = True
            too_short += not indexed
        self.sets.append({"name": name, "path": cfg.path, "fields": cfg.fields, "items": len(rows),
                          "too_short": too_short})

    def matches(self, text: str) -> tuple[set[str], str | None]:
        """The items sharing an n-gram with `text`, and one shared n-gram as an example."""
        tokens = word_tokens(text)
        found: set[str] = set()
        example = None
        for i in range(len(tokens) - self.ngram + 1):
            items = self.items_by_gram.get(tuple(tokens[i:i + self.ngram]))
            if items:
                found |= items
                example = example or " ".join(tokens[i:i + self.ngram])
        return found, example


def build_index(eval_sets: list[EvalSetConfig], ngram: int) -> EvalIndex:
    """Index the n-grams of all evaluation sets."""
    index = EvalIndex(ngram)
    for cfg in eval_sets:
        index.add_set(cfg)
    return index


def find_contamination(documents: Iterable[tuple[str, str]], index: EvalIndex, total: int | None = None
                       ) -> list[dict]:
    """One match record (document, items, example n-gram) per contaminated document."""
    progress = Progress("decontaminate", total=total)
    found = []
    for doc_id, text in documents:
        items, example = index.matches(text)
        if items:
            found.append({"document": doc_id, "items": sorted(items), "ngram": example})
        progress.update()
    progress.finish()
    return found


def describe(items: list[str]) -> str:
    """Short `detail` text for the drops file: the matched items, at most a few named."""
    more = len(items) - MAX_ITEMS_IN_DETAIL
    return ", ".join(items[:MAX_ITEMS_IN_DETAIL]) + (f" (+{more} more)" if more > 0 else "")


def contamination_report(index: EvalIndex, found: list[dict]) -> dict:
    """Per-set counts of items matched, and every match (which items, which document)."""
    matched = {item for match in found for item in match["items"]}
    sets = [{**s, "items_matched": sum(1 for item in matched if item.split(":", 1)[0] == s["name"])}
            for s in index.sets]
    return {"ngram": index.ngram, "eval_sets": sets, "documents": len(found), "matches": found}
