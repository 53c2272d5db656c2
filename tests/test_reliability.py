"""Bad input and faults: every bad file or row is named in one line, nothing else is lost, and
`curate audit` accounts for every document."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.schema import ID
from tests.conftest import BUNDLED_DOCS, BUNDLED_LABELS
from tests.helpers import REPO, big_input, read_dir, run_curate, write_job

GOOD = BUNDLED_DOCS / "part-00.parquet"
GOOD_ROWS = pq.ParquetFile(GOOD).metadata.num_rows


def good_rows(n: int | None = None) -> list[dict]:
    rows = pq.read_table(GOOD).to_pylist()
    return rows[:n] if n else rows


def score_folder(inputs: Path, out: Path, model: Path, *extra, tasks: int = 2, prefix=()):
    return run_curate("score", inputs, "--model", model, "--out", out, "--tasks", tasks, "--workers", min(tasks, 2),
                      *extra, prefix=prefix)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def folder_with(tmp_path: Path, name: str, writer) -> Path:
    """An input folder holding one good real file and one bad file made by `writer(path)`."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(GOOD, inputs / "good.parquet")
    writer(inputs / name)
    return inputs


def truncated(path: Path):
    data = GOOD.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_pages(path: Path):
    data = bytearray(GOOD.read_bytes())
    for i in range(2000, 6000):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def zero_bytes(path: Path):
    path.write_bytes(b"")


def no_text_column(path: Path):
    pq.write_table(pq.read_table(GOOD).drop(["text"]), path)


BAD_FILES = [
    ("truncated.parquet", truncated, "not a readable Parquet file"),
    ("corrupt.parquet", corrupt_pages, "corrupt Parquet data after 0 rows"),
    ("empty.parquet", zero_bytes, "empty file (0 bytes)"),
    ("notext.parquet", no_text_column, "no 'text' column"),
]


@pytest.mark.parametrize("name,writer,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_named_skipped_and_the_rest_scored(tmp_path, trained_model, name, writer, message):
    inputs = folder_with(tmp_path, name, writer)
    result = score_folder(inputs, tmp_path, trained_model)
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == 1 and name in errors[0] and message in errors[0], result.stderr[-2000:]
    assert len(read_dir(tmp_path / "scores")) == GOOD_ROWS
    audit = run_curate("audit", tmp_path)
    assert audit.returncode == 0, audit.stdout
    assert "failed_files 1" in audit.stdout


def test_unreadable_file_permission_denied(tmp_path, trained_model):
    inputs = folder_with(tmp_path, "secret.parquet", lambda p: shutil.copy(GOOD, p))
    os.chmod(inputs / "secret.parquet", 0)
    # As root the file would still be readable: drop the capabilities that bypass file permissions.
    result = score_folder(inputs, tmp_path, trained_model,
                          prefix=("setpriv", "--bounding-set", "-dac_override,-dac_read_search"))
    assert result.returncode == 1
    assert any("secret.parquet: permission denied" in e for e in error_lines(result)), result.stderr[-2000:]
    assert len(read_dir(tmp_path / "scores")) == GOOD_ROWS


def test_bad_rows_are_dropped_by_reason_and_counted(tmp_path, trained_model):
    rows = good_rows(8)
    rows[0]["text"] = None
    rows[1]["text"] = ""
    rows[2]["text"] = " \n\t "
    rows[3]["metadata"] = "{not json"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(GOOD)), inputs / "rows.parquet")
    with open(inputs / "lines.jsonl", "wb") as f:
        f.write(json.dumps({"url": "u:1", "text": "A fine line."}).encode() + b"\n")
        f.write(b'{"url": "u:2", "text": "broken\n')  # malformed JSON
        f.write(b'{"url": "u:3", "text": "bad \xff\xfe utf8"}\n')  # invalid UTF-8
        f.write(json.dumps({"url": "u:4", "text": 42}).encode() + b"\n")  # text not a string
        f.write(json.dumps({"url": "u:5", "text": "Another fine line."}).encode() + b"\n")
    result = score_folder(inputs, tmp_path, trained_model, tasks=1)
    assert result.returncode == 0, result.stderr[-2000:]
    scored = {r[ID] for r in read_dir(tmp_path / "scores")}
    assert scored == {rows[i]["url"] for i in range(3, 8)} | {"u:1", "u:5"}
    log = result.stderr
    assert "rows.parquet: row 0: null_text" in log and "rows.parquet: row 1: empty_text" in log
    assert "rows.parquet: row 3: metadata is not valid JSON" in log
    assert "lines.jsonl: row 1: malformed_json" in log and "lines.jsonl: row 2: malformed_json" in log
    assert "lines.jsonl: row 3: text_not_string" in log
    audit = run_curate("audit", tmp_path)
    assert audit.returncode == 0, audit.stdout
    assert "empty_text 2" in audit.stdout and "null_text 1" in audit.stdout and "malformed_json 2" in audit.stdout


def test_huge_document_and_repeated_url_are_kept_and_counted(tmp_path, trained_model):
    rows = good_rows(4)
    rows[0]["text"] = ("We check the result by substituting back. " * 130_000)[:5_000_000]
    rows[2]["url"] = rows[1]["url"]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(GOOD)), inputs / "odd.parquet")
    job = write_job(tmp_path / "job.yaml", name="odd", output_dir=str(tmp_path / "out"),
                    input={"paths": [str(inputs)]}, train={"labels": str(BUNDLED_LABELS), "epoch": 5},
                    score={"tasks": 1, "workers": 1}, mix={"method": "threshold", "threshold": 0.0})
    result = run_curate("run", job)
    assert result.returncode == 0, result.stderr[-2000:]
    scored = read_dir(tmp_path / "out" / "scores")
    assert len(scored) == 4 and scored[0]["n_tokens"] > 500_000
    stats = json.loads((tmp_path / "out" / "mix" / "stats.json").read_text())
    assert stats["dropped"]["duplicate_id"] == 1 and stats["documents_out"] == 3
    assert run_curate("audit", tmp_path / "out").returncode == 0


@pytest.mark.parametrize("value,problem", [(-1, "negative"), (1.5, "whole-number count")])
def test_labels_with_bad_counts_are_rejected_naming_file_and_row(tmp_path, value, problem):
    table = pq.read_table(BUNDLED_LABELS).slice(0, 50)
    counts = table.column("backtracking").to_pylist()
    counts[7] = value
    column = pa.array(counts, type=pa.float64() if isinstance(value, float) else pa.int32())
    table = table.set_column(table.schema.get_field_index("backtracking"), "backtracking", column)
    pq.write_table(table, tmp_path / "labels.parquet")
    result = run_curate("train", tmp_path / "labels.parquet", tmp_path / "clf")
    assert result.returncode != 0
    errors = error_lines(result)
    assert len(errors) == 1 and "labels.parquet" in errors[0] and problem in errors[0], result.stderr[-1500:]
    assert "row 7" in errors[0]
    assert not (tmp_path / "clf" / "classifier" / "model.bin").exists()


@pytest.mark.parametrize("mix,message", [({"token_budgett": 5}, "unknown key 'mix.token_budgett'"),
                                         ({"token_budget": "lots"}, "key 'mix.token_budget'")])
def test_bad_job_file_is_rejected_before_any_work(tmp_path, mix, message):
    job = write_job(tmp_path / "job.yaml", name="bad", output_dir=str(tmp_path / "out"),
                    input={"paths": [str(BUNDLED_DOCS)]}, mix=mix)
    result = run_curate("run", job)
    assert result.returncode == 2
    assert error_lines(result) == [f"error: {job}: {message}" + error_lines(result)[0].split(message, 1)[1]]
    assert not (tmp_path / "out").exists()


def test_sigkill_mid_write_leaves_no_partial_shard_and_relaunch_matches_clean_run(tmp_path, trained_model):
    (tmp_path / "inputs").mkdir()
    inputs = big_input(tmp_path / "inputs" / "big.parquet", copies=40).parent
    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "curate", "score", str(inputs), "--model", str(trained_model), "--out",
            str(killed), "--tasks", "1", "--workers", "1"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    partial = killed / "scores" / ".00000.parquet.tmp"
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > 0):
        assert proc.poll() is None, "scoring finished before it could be killed; make the input bigger"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "scores" / "00000.parquet").exists()  # nothing a later stage would read
    assert run_curate("audit", tmp_path / "none").returncode != 0
    relaunch = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert relaunch.returncode == 0, relaunch.stderr[-2000:]
    clean = run_curate("score", inputs, "--model", trained_model, "--out", tmp_path / "clean", "--tasks", 1,
                       "--workers", 1)
    assert clean.returncode == 0
    shard = Path("scores") / "00000.parquet"
    assert pq.read_table(killed / shard).equals(pq.read_table(tmp_path / "clean" / shard))
    assert pq.ParquetFile(killed / shard).metadata.num_rows == 40 * 600
