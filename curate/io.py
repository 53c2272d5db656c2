"""Reading OpenWebMath-schema input files and writing outputs atomically.

Readers never raise on a bad row: they yield a `Dropped` record naming the file, row and reason,
so every stage can count it. A file that cannot be read at all raises `InputError` with a
one-line message; callers report it and go on with the other files.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from curate.schema import DATE, ID, METADATA, TEXT, URL, doc_id

INPUT_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json.gz", ".jsonl.zst")
PARQUET_BATCH_ROWS = 1024


class InputError(Exception):
    """A whole input file that cannot be read; the message is one line naming the file."""


@dataclass(frozen=True)
class Dropped:
    """A row that was not turned into a document, and why."""

    path: str
    row: int
    reason: str
    detail: str = ""

    def message(self) -> str:
        return f"{self.path}: row {self.row}: {self.reason}{': ' + self.detail if self.detail else ''}"


def list_input_files(paths: list[str], pattern: str | None = None) -> list[str]:
    """Expand files and folders into a sorted list of input files; missing paths are an error."""
    files: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            if pattern:
                found = globlib.glob(str(path / pattern), recursive=True)
            else:
                found = [str(f) for f in path.rglob("*") if f.is_file() and str(f).endswith(INPUT_SUFFIXES)]
            files.extend(sorted(found))
        elif path.exists():
            files.append(str(path))
        else:
            raise InputError(f"{p}: no such file or folder")
    return sorted(dict.fromkeys(files))


def _iter_parquet_rows(path: str) -> Iterator[dict | Dropped]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file: {str(e).splitlines()[0]}") from None
    names = pf.schema_arrow.names
    if TEXT not in names:
        raise InputError(f"{path}: no '{TEXT}' column (columns: {', '.join(names) or 'none'})")
    columns = [c for c in (URL, TEXT, DATE, METADATA) if c in names]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            for record in batch.to_pylist():
                yield record
                row += 1
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: corrupt Parquet data after row {row}: {str(e).splitlines()[0]}") from None


def _iter_jsonl_rows(path: str) -> Iterator[dict | Dropped]:
    import fsspec

    with fsspec.open(path, "rb", compression="infer") as f:
        for row, line in enumerate(f):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                yield Dropped(path, row, "malformed_json", str(e).splitlines()[0])
                continue
            if not isinstance(record, dict):
                yield Dropped(path, row, "malformed_json", f"expected an object, got {type(record).__name__}")
                continue
            yield record


def iter_rows(path: str) -> Iterator[dict | Dropped]:
    """Raw rows of one input file (Parquet or JSONL), or `Dropped` for rows that do not parse."""
    try:
        if os.path.getsize(path) == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
        with open(path, "rb"):
            pass
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    if path.endswith(".parquet"):
        yield from _iter_parquet_rows(path)
    elif path.endswith(INPUT_SUFFIXES):
        yield from _iter_jsonl_rows(path)
    else:
        raise InputError(f"{path}: unknown input format (expected one of {', '.join(INPUT_SUFFIXES)})")


def to_document(record: dict, path: str, row: int) -> dict | Dropped:
    """Validate one raw row into a document dict (id, url, text, date, metadata) or a `Dropped`."""
    text = record.get(TEXT)
    if text is None:
        return Dropped(path, row, "null_text")
    if not isinstance(text, str):
        return Dropped(path, row, "text_not_string", type(text).__name__)
    if not text.strip():
        return Dropped(path, row, "empty_text")
    url = record.get(URL)
    url = url if isinstance(url, str) and url else None
    metadata = record.get(METADATA)
    if metadata is not None and not isinstance(metadata, str):
        metadata = json.dumps(metadata, ensure_ascii=False, default=str)
    return {ID: doc_id(url, text), URL: url, TEXT: text, DATE: record.get(DATE), METADATA: metadata}


def metadata_problem(document: dict) -> str | None:
    """Why a document's `metadata` is unusable (not a JSON object), or None when it is fine or absent."""
    raw = document.get(METADATA)
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return f"metadata is not valid JSON ({str(e).splitlines()[0]})"
    return None if isinstance(value, dict) else f"metadata is JSON {type(value).__name__}, not an object"


def iter_documents(path: str) -> Iterator[dict | Dropped]:
    """Documents of one input file in file order, with `Dropped` in place of unusable rows."""
    for row, record in enumerate(iter_rows(path)):
        yield record if isinstance(record, Dropped) else to_document(record, path, row)


def iter_readable(files: list[str], on_error: Callable[[str, str, int], None] | None = None
                  ) -> Iterator[tuple[str, int, dict | Dropped]]:
    """(path, row, document or `Dropped`) of every file in order. A file that cannot be read, at its
    start or midway, is passed to `on_error(path, one-line message, rows read)` (default: logged)
    and the other files go on; the rows read before the error are kept."""
    for path in files:
        row = 0
        try:
            for row, item in enumerate(iter_documents(path), start=1):
                yield path, row - 1, item
        except InputError as e:
            if on_error is None:
                logging.getLogger("curate").error(str(e))
            else:
                on_error(path, str(e), row)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Write a zstd Parquet file atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_json(obj, path: str | Path) -> None:
    """Write pretty JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())
