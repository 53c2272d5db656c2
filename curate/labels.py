"""Reading labels files (the labels contract of `curate.schema`): counts, and evidence quotes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.schema import BEHAVIORS, ID, LABELS_SCHEMA, RAW_RESPONSE, TEXT, URL


class LabelsError(ValueError):
    """A labels file that cannot be trained on."""


def _integer_counts(path, table, behavior: str) -> np.ndarray:
    """One count column as an object array of ints and Nones; one-line error naming the first bad row."""
    values = table.column(behavior).to_pylist()
    out = np.empty(len(values), dtype=object)
    for row, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out[row] = None
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v):
            raise LabelsError(f"{path}: row {row}: '{behavior}' must be a whole-number count, found {v!r}")
        if v < 0:
            raise LabelsError(f"{path}: row {row}: '{behavior}' is a negative count ({v})")
        out[row] = int(v)
    return out


def _read_table(path: str | Path):
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise LabelsError(f"{path}: not a readable labels file: {str(e).splitlines()[0]}") from None
    missing = [c for c in (ID, TEXT, *BEHAVIORS) if c not in table.column_names]
    if missing:
        raise LabelsError(f"{path}: labels file lacks column(s) {', '.join(missing)}")
    counts = np.stack([_integer_counts(path, table, b) for b in BEHAVIORS], axis=1)
    usable = np.array([all(c is not None for c in row) for row in counts], dtype=bool)
    return table, counts, np.flatnonzero(usable)


@dataclass(frozen=True)
class Labels:
    """The usable rows of a labels file: those whose four counts all parsed."""

    ids: list[str]
    texts: list[str]
    counts: np.ndarray  # (rows, 4) int64, in BEHAVIORS order
    evidence: list[dict[str, list[str]]]  # the labeler's quotes by behavior; {} where there are none
    urls: list[str]  # the id where the url is missing
    skipped: int  # rows left out because a count was null (an unparseable label)


def _evidence(raw: str | None) -> dict[str, list[str]]:
    """The quotes of one `raw_response` ({"evidence": {behavior: [quote, ...]}}); {} where there are none."""
    try:
        evidence = json.loads(raw)["evidence"]
        return {b: [q for q in evidence.get(b, []) if isinstance(q, str) and q.strip()] for b in BEHAVIORS}
    except (TypeError, ValueError, KeyError, AttributeError):
        return {}


def read_labels(path: str | Path) -> Labels:
    """The usable rows of a labels file (LabelsError, one line naming the row, when a count is not one)."""
    table, counts, keep = _read_table(path)
    ids, texts, urls = table.column(ID).to_pylist(), table.column(TEXT).to_pylist(), _urls(table)
    raw = table.column(RAW_RESPONSE).to_pylist() if RAW_RESPONSE in table.column_names else [None] * len(table)
    return Labels(ids=[ids[i] for i in keep], texts=[texts[i] for i in keep], counts=counts[keep].astype(np.int64),
                  evidence=[_evidence(raw[i]) for i in keep], urls=[urls[i] for i in keep],
                  skipped=len(counts) - len(keep))


def read_counts(path: str | Path) -> dict[str, dict[str, int | None]]:
    """id -> {behavior: count or None} of a labels file (LabelsError, one line, when it is not one)."""
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise LabelsError(f"{path}: not a readable labels file: {str(e).splitlines()[0]}") from None
    missing = [c for c in (ID, *BEHAVIORS) if c not in schema.names]
    if missing:
        raise LabelsError(f"{path}: labels file lacks column(s) {', '.join(missing)}")
    table = pq.read_table(path, columns=[ID, *BEHAVIORS])
    columns = {c: table[c].to_pylist() for c in (ID, *BEHAVIORS)}
    return {i: {b: columns[b][k] for b in BEHAVIORS} for k, i in enumerate(columns[ID])}


def read_lengths_and_hosts(path: str | Path) -> tuple[dict[str, int], dict[str, str]]:
    """id -> characters of its text, and id -> url host ('' without a url), of a labels file."""
    from curate.metrics import url_host

    table, _, _ = _read_table(path)
    ids, texts = table.column(ID).to_pylist(), table.column(TEXT).to_pylist()
    return {i: len(t or "") for i, t in zip(ids, texts)}, {i: url_host(u) for i, u in zip(ids, _urls(table))}


def as_labels(table: pa.Table) -> pa.Table:
    """A labels table in LABELS_SCHEMA (columns the file lacks, e.g. `raw_response`, are null)."""
    columns = [table[c].cast(f.type) if c in table.column_names else pa.nulls(len(table), f.type)
               for c, f in zip(LABELS_SCHEMA.names, LABELS_SCHEMA)]
    return pa.Table.from_arrays(columns, schema=LABELS_SCHEMA)


def combine_labels(paths: list[Path], out: Path) -> Path:
    """The rows of several labels files as one (LABELS_SCHEMA), a document labeled in more than one
    taking its row from the first file that has it; written atomically to `out`."""
    from curate.io import write_parquet

    tables = [as_labels(pq.read_table(p)) for p in paths]
    seen: set[str] = set()
    keep = []
    for table in tables:
        ids = table.column(ID).to_pylist()
        rows = [i for i, doc in enumerate(ids) if doc not in seen]
        seen.update(ids)
        keep.append(table.take(rows))
    write_parquet(pa.concat_tables(keep), out)
    return out


def _urls(table: pa.Table) -> list[str]:
    """Each row's url, its id where the url is missing."""
    ids = table.column(ID).to_pylist()
    urls = table.column(URL).to_pylist() if URL in table.column_names else ids
    return [url or doc_id for url, doc_id in zip(urls, ids)]
