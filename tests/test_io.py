"""curate.io on local files: reading errors stay with their file (at open or midway, with the rows read),
the rows before an error are kept, files curate does not read are named, writes are atomic, `file://` and
`memory://` URLs work like paths."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from backports import zstd  # what fsspec decodes .zst with below Python 3.14 (a declared dependency)

from curate.io import (
    Dropped, InputError, StorageError, atomic_path, count_rows, file_sha256, find_inputs, iter_documents,
    iter_readable, list_input_files, read_json, stamp, write_json, write_parquet,
)
from curate.schema import ID, TEXT
from curate.storage import exists, join
from tests.conftest import BUNDLED_DOCS

GOOD = BUNDLED_DOCS / "part-00.parquet"


def rows(n: int | None = None) -> list[dict]:
    table = pq.read_table(sorted(BUNDLED_DOCS.glob("*.parquet")))
    return table.to_pylist()[:n] if n else table.to_pylist()


def jsonl_bytes(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def cut(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: int(len(data) * fraction)]


def read_all(files: list[str]) -> tuple[list[tuple[str, int, object]], list[tuple[str, str, int]]]:
    errors: list[tuple[str, str, int]] = []
    items = list(iter_readable(files, on_error=lambda *e: errors.append(e)))
    return items, errors


def assert_one_line_error(errors, path: Path, problem: str, rows_read: int, items) -> None:
    assert len(errors) == 1, errors
    failed, message, reported = errors[0]
    assert failed == str(path) and message.startswith(f"{path}: ") and "\n" not in message
    assert problem in message and f"after {rows_read} rows" in message, message
    assert reported == rows_read == sum(1 for p, _, _ in items if p == str(path))


@pytest.fixture
def good_copy(tmp_path) -> Path:
    """A real good Parquet file that comes after the bad files of these tests in file order."""
    path = tmp_path / "z-good.parquet"
    path.write_bytes(GOOD.read_bytes())
    return path


TRUNCATED = [
    ("docs.jsonl.gz", gzip.compress, "compressed data ends early (truncated file)"),
    ("docs.jsonl.zst", zstd.compress, "compressed data ends early (truncated file)"),
]


@pytest.mark.parametrize("name,compress,problem", TRUNCATED, ids=[t[0] for t in TRUNCATED])
def test_truncated_compressed_file_keeps_rows_read_and_other_files_go_on(tmp_path, good_copy, name, compress,
                                                                          problem):
    records = rows()
    bad = tmp_path / name
    bad.write_bytes(cut(compress(jsonl_bytes(records))))
    items, errors = read_all([str(bad), str(good_copy)])
    read_from_bad = [item for p, _, item in items if p == str(bad)]
    assert 0 < len(read_from_bad) < len(records)
    assert [d[ID] for d in read_from_bad] == [r["url"] for r in records[: len(read_from_bad)]]  # rows kept, in order
    assert_one_line_error(errors, bad, problem, len(read_from_bad), items)
    assert sum(1 for p, _, _ in items if p == str(good_copy)) == pq.ParquetFile(GOOD).metadata.num_rows


def corrupt_row_group(path: Path, group: int) -> int:
    """Overwrite the first page header of the text column in one row group; rows in the groups before it."""
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(group).column(meta.schema.to_arrow_schema().get_field_index(TEXT))
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + 64] = bytes(b ^ 0x5A for b in data[start:start + 64])
    path.write_bytes(bytes(data))
    return sum(meta.row_group(g).num_rows for g in range(group))


def test_parquet_with_a_corrupt_later_row_group_keeps_the_groups_before(tmp_path, good_copy):
    bad = tmp_path / "groups.parquet"
    pq.write_table(pa.Table.from_pylist(rows()), bad, row_group_size=100, compression="zstd")
    assert pq.ParquetFile(bad).metadata.num_row_groups >= 4
    before = corrupt_row_group(bad, 3)
    items, errors = read_all([str(bad), str(good_copy)])
    assert_one_line_error(errors, bad, "corrupt Parquet data", before, items)
    assert count_rows(str(bad)) == 600  # the footer is intact: the count is of rows, not of readable rows


def test_jsonl_cut_mid_line_is_a_file_error_but_a_bad_line_inside_is_a_dropped_row(tmp_path):
    records = rows(5)
    data = jsonl_bytes(records[:2]) + b'{"text": "broken\n' + b"\n" + jsonl_bytes(records[2:])
    cut_short = tmp_path / "cut.jsonl"
    cut_short.write_bytes(data[:-20])
    items, errors = read_all([str(cut_short)])
    assert [type(item) for _, _, item in items] == [dict, dict, Dropped, dict, dict]  # the blank line is no row
    assert items[2][2].reason == "malformed_json" and items[2][1] == 2
    assert_one_line_error(errors, cut_short, "last line cut short", 5, items)

    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(data.rstrip(b"\n"))  # a last line without its newline is fine when it parses
    items, errors = read_all([str(whole)])
    assert errors == [] and len(items) == count_rows(str(whole)) == 6


def test_file_errors_at_open_report_zero_rows(tmp_path, caplog):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jsonl"
    items, errors = read_all([str(empty), str(missing), str(GOOD)])
    assert errors == [(str(empty), f"{empty}: empty file (0 bytes)", 0),
                      (str(missing), f"{missing}: no such file", 0)]
    assert len(items) == pq.ParquetFile(GOOD).metadata.num_rows
    with caplog.at_level(logging.ERROR, logger="curate.io"):
        assert list(iter_readable([str(missing)])) == []
    assert [r.getMessage() for r in caplog.records] == [f"{missing}: no such file"]


def test_files_not_read_are_named_in_one_line_by_suffix(tmp_path, caplog):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.parquet").write_bytes(GOOD.read_bytes())
    (tmp_path / "in" / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(rows(3))))
    for name in ("notes.csv", "sub/more.csv", "README", "old.csv.gz"):
        (tmp_path / "in" / name).write_text("x")
    with caplog.at_level(logging.WARNING, logger="curate.io"):
        listing = find_inputs([str(tmp_path / "in")])
    assert listing.files == [str(tmp_path / "in" / "a.parquet"), str(tmp_path / "in" / "sub" / "b.jsonl.gz")]
    assert listing.not_read_by_suffix() == {"(no suffix)": 1, ".csv": 2, ".csv.gz": 1}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "4 file(s)" in warnings[0] and "2 .csv" in warnings[0]
    assert list_input_files([str(tmp_path / "in")], "**/*.jsonl.gz") == [str(tmp_path / "in" / "sub" / "b.jsonl.gz")]
    with pytest.raises(InputError, match="no such file or folder"):
        list_input_files([str(tmp_path / "nothing")])
    assert issubclass(InputError, StorageError) and issubclass(StorageError, OSError)  # the CLI prints OSErrors


def test_file_url_reads_lists_and_writes_like_a_path(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.parquet").write_bytes(GOOD.read_bytes())
    url = f"file://{tmp_path}/in"
    files = list_input_files([url])
    assert files == [str(tmp_path / "in" / "a.parquet")]
    assert [d[ID] for d in iter_documents(f"{url}/a.parquet")] == [d[ID] for d in iter_documents(str(GOOD))]
    write_json({"ok": 1}, f"file://{tmp_path}/out/x.json")
    assert read_json(str(tmp_path / "out" / "x.json")) == {"ok": 1} == read_json(f"file://{tmp_path}/out/x.json")
    assert os.listdir(tmp_path / "out") == ["x.json"]
    assert stamp(f"file://{tmp_path}/out/x.json") == stamp(tmp_path / "out" / "x.json")
    assert exists(f"file://{tmp_path}/out/x.json") and not exists(join(str(tmp_path), "out", "y.json"))


def test_local_stamp_and_sha256():
    st = os.stat(GOOD)
    assert stamp(GOOD) == (os.path.abspath(GOOD), st.st_size, st.st_mtime_ns)
    assert file_sha256(GOOD) == hashlib.sha256(GOOD.read_bytes()).hexdigest()


def test_failed_write_leaves_nothing_locally_and_on_a_store_without_whole_uploads(tmp_path):
    table = pa.Table.from_pylist(rows(10))
    memory = fsspec.filesystem("memory")

    def memory_listing():
        return memory.ls("/curate-test/out", detail=False) if memory.exists("/curate-test/out") else []

    for target, listing in [(str(tmp_path / "out" / "t.parquet"), lambda: os.listdir(tmp_path / "out")),
                            ("memory://curate-test/out/t.parquet", memory_listing)]:
        with pytest.raises(RuntimeError), atomic_path(target) as tmp:
            pq.write_table(table, tmp)
            raise RuntimeError("writer failed midway")
        assert listing() == []  # no final file, no temporary one
        write_parquet(table, target)
        assert [Path(p).name for p in listing()] == ["t.parquet"]
        with fsspec.open(target, "rb") as f:
            assert pq.read_table(f).equals(table)
    memory.rm("/curate-test", recursive=True)


def test_a_url_in_a_path_object_is_refused():
    with pytest.raises(ValueError, match="pass URLs as str"):
        write_json({}, Path("s3://bucket/x.json"))
