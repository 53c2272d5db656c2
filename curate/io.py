"""Reading OpenWebMath-schema input files and writing outputs atomically, at local paths or fsspec URLs
(`s3://`, `gs://`, `hf://datasets/...`, `file://`; `curate.storage` says where credentials come from).

Readers never raise on a bad row: they yield a `Dropped` record naming the file, row and reason, so every
stage can count it. A file that cannot be read raises `InputError`, one line naming the file: at open, or
midway (a truncated gzip/zstd stream, a corrupt Parquet row group, a last JSONL line cut short, a store
failing mid-stream), and then the line says how many rows were read. The rule for those rows: they are
kept. A reader never takes back a row it has yielded, so a stage keeps what it got from a file that failed
later, and an audit counts that file's rows as the rows read (`iter_readable` hands that count to its
`on_error`). Callers report the file and go on with the others.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from curate.schema import DATE, ID, METADATA, TEXT, URL, doc_id
from curate.storage import (
    StorageError, describe, filesystem, first_line, local_path, read_bytes, storage_errors, upload,
)
from curate.storage import file_sha256, stamp  # noqa: F401 - part of this module's API (stages import them from here)

INPUT_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json.gz", ".jsonl.zst")
COMPRESSION_SUFFIXES = (".gz", ".zst", ".bz2", ".xz")
PARQUET_BATCH_ROWS = 1024

log = logging.getLogger(__name__)


class InputError(StorageError):
    """An input file (or input location) that cannot be read; the message is one line naming it."""


@dataclass(frozen=True)
class Dropped:
    """A row that was not turned into a document, and why."""

    path: str
    row: int
    reason: str
    detail: str = ""

    def message(self) -> str:
        return f"{self.path}: row {self.row}: {self.reason}{': ' + self.detail if self.detail else ''}"


def _suffix(path: str) -> str:
    """A file's format suffix, with a compression suffix kept together with the one before it."""
    suffixes = PurePosixPath(path).suffixes
    if len(suffixes) > 1 and suffixes[-1] in COMPRESSION_SUFFIXES:
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else "(no suffix)"


@dataclass(frozen=True)
class InputListing:
    """The input files found under some paths, and the files in the input folders that curate does not
    read (another format)."""

    files: list[str]
    not_read: list[str]

    def not_read_by_suffix(self) -> dict[str, int]:
        return dict(sorted(Counter(_suffix(f) for f in self.not_read).items()))

    def not_read_line(self) -> str | None:
        """One line naming the files left out, counted by suffix; None when there are none."""
        if not self.not_read:
            return None
        counts = ", ".join(f"{n} {suffix}" for suffix, n in self.not_read_by_suffix().items())
        return (f"{len(self.not_read)} file(s) in the input folders not read ({counts}; curate reads "
                f"{', '.join(INPUT_SUFFIXES)}), e.g. {self.not_read[0]}")


def _is_folder(path: str | Path) -> bool:
    """Whether an input path is a folder (else a file); a missing one is an `InputError`."""
    local, path = local_path(path), str(path)
    if local is not None:
        if not os.path.exists(local):
            raise InputError(f"{path}: no such file or folder")
        return os.path.isdir(local)
    fs, fs_path = filesystem(path, InputError)
    with storage_errors(path, InputError):
        return fs.info(fs_path)["type"] == "directory"


def _list_folder(path: str, pattern: str | None) -> list[str]:
    """The files under a folder (recursively, or matching `pattern`), through datatrove's DataFolder."""
    from datatrove.io import DataFolder  # huggingface_hub comes with it: imported when a folder is listed

    with storage_errors(path, InputError, "cannot list"):
        folder = DataFolder(path)
        found = folder.list_files(glob_pattern=pattern)
    local = local_path(path)
    return [os.path.join(local, f) for f in found] if local is not None else folder.resolve_paths(found)


def find_inputs(paths: list[str], pattern: str | None = None) -> InputListing:
    """Expand files and folders (local paths or URLs) into a sorted list of input files; missing paths are
    an `InputError`. A folder contributes its files with an input suffix (`INPUT_SUFFIXES`), all of them or
    those matching `pattern` (a glob relative to the folder, e.g. `**/*.parquet`); its other files are
    listed in `not_read` and named in one warning. A path naming a file is taken whatever its suffix."""
    files: list[str] = []
    not_read: list[str] = []
    for p in paths:
        if not _is_folder(p):
            files.append(str(p))
            continue
        for f in _list_folder(str(p), pattern):
            (files if f.endswith(INPUT_SUFFIXES) else not_read).append(f)
    listing = InputListing(sorted(dict.fromkeys(files)), sorted(dict.fromkeys(not_read)))
    if line := listing.not_read_line():
        log.warning(line)
    return listing


def list_input_files(paths: list[str], pattern: str | None = None) -> list[str]:
    """The input files of `find_inputs` (files curate does not read are logged there)."""
    return find_inputs(paths, pattern).files


def _check_readable(path: str) -> None:
    local = local_path(path)
    if local is None:
        fs, fs_path = filesystem(path, InputError)
        with storage_errors(path, InputError):
            size = fs.size(fs_path)
    else:
        try:
            size = os.path.getsize(local)
            with open(local, "rb"):
                pass
        except PermissionError:
            raise InputError(f"{path}: permission denied") from None
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")


@contextlib.contextmanager
def _parquet_file(path: str):
    """An open `pq.ParquetFile`: local files natively, URLs through their fsspec file (ranged reads: the
    footer alone costs a read or two, whatever the file's size)."""
    local = local_path(path)
    with contextlib.ExitStack() as stack:
        if local is None:
            fs, fs_path = filesystem(path, InputError)
            with storage_errors(path, InputError):
                source = stack.enter_context(fs.open(fs_path, "rb"))
        else:
            source = local
        try:
            pf = stack.enter_context(pq.ParquetFile(source))
        except Exception as e:  # noqa: BLE001 - whatever pyarrow or the store raise, this file is unreadable
            raise InputError(f"{path}: not a readable Parquet file: {_data_problem(e, path)[1]}") from None
        yield pf


def _data_problem(error: BaseException, path: str, corrupt: str = "corrupt data") -> tuple[str, str]:
    """What failed while reading a file's data, and the detail: corrupt data (Parquet, gzip, zstd), data
    that ends early (truncated), or the store under it (then `describe`s words)."""
    if isinstance(error, EOFError):
        return "compressed data ends early (truncated file)", first_line(error)
    if isinstance(error, (zlib.error, gzip.BadGzipFile)) or type(error).__name__ == "ZstdError":
        return "corrupt compressed data", first_line(error)
    if isinstance(error, pa.ArrowException) or type(error) is OSError:  # pyarrow reports bad bytes as OSError
        return corrupt, first_line(error)
    return "reading failed", describe(error, path)


def _failed_midway(path: str, rows: int, error: BaseException, corrupt: str = "corrupt data") -> InputError:
    what, detail = _data_problem(error, path, corrupt)
    return InputError(f"{path}: {what} after {rows} rows ({detail})")


def _iter_parquet_rows(path: str) -> Iterator[dict | Dropped]:
    with _parquet_file(path) as pf:
        names = pf.schema_arrow.names
        if TEXT not in names:
            raise InputError(f"{path}: no '{TEXT}' column (columns: {', '.join(names) or 'none'})")
        columns = [c for c in (URL, TEXT, DATE, METADATA) if c in names]
        row = 0
        try:
            for group in range(pf.num_row_groups):  # one group at a time: a bad group keeps the rows before it
                for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=columns):
                    for record in batch.to_pylist():
                        yield record
                        row += 1
        except Exception as e:  # noqa: BLE001 - any failure midway is this file's
            raise _failed_midway(path, row, e, "corrupt Parquet data") from None


def _iter_jsonl_rows(path: str) -> Iterator[dict | Dropped]:
    """Rows of a JSONL file (plain, .gz or .zst, streamed); blank lines are not rows."""
    row = 0
    try:
        with fsspec.open(path, "rb", compression="infer") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    if not line.endswith(b"\n"):  # only the last line lacks one: the file was cut
                        raise InputError(f"{path}: last line cut short after {row} rows (no newline, not valid JSON)")
                    yield Dropped(path, row, "malformed_json", str(e).splitlines()[0])
                    row += 1
                    continue
                if isinstance(record, dict):
                    yield record
                else:
                    yield Dropped(path, row, "malformed_json", f"expected an object, got {type(record).__name__}")
                row += 1
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure while streaming is this file's
        raise _failed_midway(path, row, e) from None


def iter_rows(path: str) -> Iterator[dict | Dropped]:
    """Raw rows of one input file (Parquet or JSONL, local or URL), or `Dropped` for rows that do not parse.
    Raises `InputError` at open or midway (see the module's docstring for the rows read before)."""
    path = str(path)
    _check_readable(path)
    if path.endswith(".parquet"):
        yield from _iter_parquet_rows(path)
    elif path.endswith(INPUT_SUFFIXES):
        yield from _iter_jsonl_rows(path)
    else:
        raise InputError(f"{path}: unknown input format (expected one of {', '.join(INPUT_SUFFIXES)})")


def count_rows(path: str) -> int:
    """Rows in an input file without parsing them: the Parquet footer (on a store: ranged reads of the
    footer, not the file), or the non-blank lines of JSONL (streamed). Unreadable: `InputError`."""
    path = str(path)
    if path.endswith(".parquet"):
        with _parquet_file(path) as pf:
            return pf.metadata.num_rows
    try:
        with fsspec.open(path, "rb", compression="infer") as f:
            return sum(1 for line in f if line.strip())
    except Exception as e:  # noqa: BLE001 - as in reading
        what, detail = _data_problem(e, path)
        raise InputError(f"{path}: {what} ({detail})") from None


def read_table(path, columns: list[str] | None = None) -> pa.Table:
    """A whole Parquet file (a local path, a URL, or a path object of either) as an Arrow table."""
    path = str(path)
    with _parquet_file(path) as pf:
        return pf.read(columns=columns)


def read_tables(paths, columns: list[str] | None = None) -> pa.Table:
    """Parquet files of one schema read one after another into one table."""
    tables = [read_table(p, columns) for p in paths]
    return pa.concat_tables(tables) if tables else pa.table({})


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


def iter_readable(files: list[str], on_error: Callable[[str, str, int], None] | None = None,
                  ) -> Iterator[tuple[str, int, dict | Dropped]]:
    """(path, row, document or `Dropped`) of every input file in order. A file that fails, at open or
    midway, is passed to `on_error(path, one_line_message, rows_read)` (default: logged as an error) and the
    next file goes on; its rows yielded before the failure stay yielded (`rows_read` of them, counting
    `Dropped` rows too)."""
    for path in files:
        rows_read = 0
        try:
            for row, item in enumerate(iter_documents(path)):
                rows_read = row + 1
                yield path, row, item
        except InputError as e:
            if on_error is None:
                log.error(str(e))
            else:
                on_error(path, str(e), rows_read)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary local path; only if the block succeeds does it become `path`, whole.

    A local path (or `file://` URL): a temporary file beside it, renamed onto it. A URL: a local temporary
    file, uploaded when the block is done (`curate.storage.upload`: the object appears only complete; a
    writer killed before or during the upload leaves nothing under `path`)."""
    local = local_path(path)
    if local is None:
        with tempfile.TemporaryDirectory(prefix="curate-upload-") as folder:
            tmp = Path(folder) / PurePosixPath(str(path)).name
            yield tmp
            upload(tmp, str(path))
        return
    path = Path(local)
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
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")


def write_text(text: str, path: str | Path) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | Path):
    """A JSON file's value (a local path or a URL)."""
    return json.loads(read_bytes(path))
