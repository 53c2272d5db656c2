"""curate.io and curate.storage against a real S3-compatible server (moto's standalone server, over HTTP):
listing and globbing, reading Parquet and JSONL.gz, footer row counts without reading the file, atomic
uploads that a SIGKILL cannot leave half-made, stamps from what the store reports, and one-line errors for
wrong credentials and missing buckets."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3fs import S3FileSystem

from curate.io import (
    InputError, StorageError, atomic_path, count_rows, file_sha256, find_inputs, iter_readable, list_input_files,
    read_json, stamp, write_json, write_parquet, write_text,
)
from curate.storage import exists, join
from tests.conftest import BUNDLED_DOCS
from tests.helpers import REPO, run_curate

PARTS = sorted(BUNDLED_DOCS.glob("*.parquet"))
FETCH = re.compile(r"Fetch: (\S+), (\d+)-(\d+)")
FOOTER_READ_LIMIT = 128 << 10


def put(server, url: str, data: bytes) -> None:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    server.client().put_object(Bucket=bucket, Key=key, Body=data)


def jsonl_gz(table: pa.Table) -> bytes:
    return gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in table.to_pylist()))


@contextlib.contextmanager
def ranged_reads(caplog):
    """The byte ranges s3fs fetches (its debug log of every ranged GET), as (key, bytes) pairs."""
    fetched: list[tuple[str, int]] = []
    with caplog.at_level(logging.DEBUG, logger="s3fs"):
        caplog.clear()
        yield fetched
        fetched.extend((m[1], int(m[3]) - int(m[2])) for r in caplog.records if (m := FETCH.search(r.getMessage())))


@pytest.fixture
def inputs(s3_server, tmp_path):
    """An s3:// input folder: the four bundled Parquet parts, a JSONL.gz (nested), a truncated JSONL.gz and a
    CSV; and the same files in a local folder."""
    bucket = s3_server.new_bucket()
    local = tmp_path / "local"
    (local / "nested").mkdir(parents=True)
    files = {f"{p.name}": p.read_bytes() for p in PARTS}
    files["nested/docs.jsonl.gz"] = jsonl_gz(pq.read_table(PARTS[1]))
    whole = jsonl_gz(pq.read_table(PARTS[2]))
    files["truncated.jsonl.gz"] = whole[: len(whole) // 2]
    files["notes.csv"] = b"a,b\n1,2\n"
    for name, data in files.items():
        put(s3_server, f"{bucket}/in/{name}", data)
        (local / name).write_bytes(data)
    return f"{bucket}/in", local


def test_listing_and_globbing_an_s3_folder(inputs, caplog):
    url, _ = inputs
    with caplog.at_level(logging.WARNING, logger="curate.io"):
        listing = find_inputs([url])
    assert set(listing.files) == {f"{url}/{p.name}" for p in PARTS} | {f"{url}/nested/docs.jsonl.gz",
                                                                      f"{url}/truncated.jsonl.gz"}
    assert listing.files == sorted(listing.files)
    assert listing.not_read == [f"{url}/notes.csv"] and listing.not_read_by_suffix() == {".csv": 1}
    assert any("1 .csv" in r.getMessage() and url in r.getMessage() for r in caplog.records)
    assert list_input_files([url], "**/*.jsonl.gz") == [f"{url}/nested/docs.jsonl.gz", f"{url}/truncated.jsonl.gz"]
    assert list_input_files([url], "*.jsonl.gz") == [f"{url}/truncated.jsonl.gz"]
    assert list_input_files([f"{url}/{PARTS[0].name}"]) == [f"{url}/{PARTS[0].name}"]
    with pytest.raises(InputError, match=re.escape(f"{url}/missing: no such file or folder")):
        list_input_files([f"{url}/missing"])


def test_reading_parquet_and_jsonl_gz_from_s3_matches_local_files(inputs):
    url, local = inputs
    remote_errors, local_errors = [], []
    remote = list(iter_readable(list_input_files([url]), on_error=lambda *e: remote_errors.append(e)))
    here = list(iter_readable(list_input_files([str(local)]), on_error=lambda *e: local_errors.append(e)))
    assert [(row, item) for _, row, item in remote] == [(row, item) for _, row, item in here]
    assert len(remote) > 600
    assert [(p.removeprefix(url), rows) for p, _, rows in remote_errors] == [("/truncated.jsonl.gz", rows)
                                                                             for _, _, rows in local_errors]
    path, message, rows_read = remote_errors[0]
    assert message.startswith(f"{path}: compressed data ends early (truncated file) after {rows_read} rows")
    assert 0 < rows_read == sum(1 for p, _, _ in remote if p == path)
    assert [count_rows(f) for f in list_input_files([url], "**/*.parquet")] == [
        pq.ParquetFile(p).metadata.num_rows for p in PARTS]
    assert count_rows(f"{url}/nested/docs.jsonl.gz") == pq.ParquetFile(PARTS[1]).metadata.num_rows


def test_footer_row_count_reads_the_footer_not_the_file(s3_server, tmp_path, caplog):
    table = pa.concat_tables([pq.read_table(PARTS).append_column("copy", pa.array([k] * 600)) for k in range(6)])
    local = tmp_path / "big.parquet"
    pq.write_table(table, local, compression="none", row_group_size=1000)
    size = local.stat().st_size
    assert size > 32 * FOOTER_READ_LIMIT
    url = f"{s3_server.new_bucket()}/big.parquet"
    put(s3_server, url, local.read_bytes())
    with ranged_reads(caplog) as fetched:
        assert count_rows(url) == 3600
    assert fetched and sum(n for _, n in fetched) <= FOOTER_READ_LIMIT, fetched  # pyarrow reads the last 64 KiB


def test_stamp_uses_what_the_store_reports_without_reading(s3_server, caplog):
    url = f"{s3_server.new_bucket()}/data/x.jsonl"
    write_text('{"text": "one"}\n', url)
    with ranged_reads(caplog) as fetched:
        first = stamp(url)
    assert fetched == []
    bucket, key = url.removeprefix("s3://").split("/", 1)
    head = s3_server.client().head_object(Bucket=bucket, Key=key)
    assert first == (url, head["ContentLength"], head["ETag"])
    write_text('{"text": "two"}\n', url)  # same size, other content
    assert stamp(url)[:2] == first[:2] and stamp(url) != first
    assert file_sha256(url) == hashlib.sha256(b'{"text": "two"}\n').hexdigest()
    write_json({"a": 1}, join(url.rsplit("/", 2)[0], "data", "x.json"))
    assert read_json(f"{url.rsplit('/', 1)[0]}/x.json") == {"a": 1}
    assert exists(url) and exists(url.rsplit("/", 1)[0]) and not exists(f"{url}.missing")


def test_a_writer_failing_midway_leaves_no_object(s3_server):
    url = f"{s3_server.new_bucket()}/out/part.parquet"
    with pytest.raises(RuntimeError), atomic_path(url) as tmp:
        pq.write_table(pq.read_table(PARTS[0]), tmp)
        raise RuntimeError("the writer failed after writing")
    bucket = url.removeprefix("s3://").split("/")[0]
    assert s3_server.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0


BIG_TEXT_BYTES = 110 << 20  # over s3fs's multipart threshold (2 x 50 MiB parts): parts, then a completion
WRITER = """
import random, sys
from curate.io import write_text
write_text(random.Random(7).randbytes({half}).hex(), sys.argv[1])
"""


def big_text_sha256() -> str:
    return hashlib.sha256(random.Random(7).randbytes(BIG_TEXT_BYTES // 2).hex().encode()).hexdigest()


def test_writer_killed_mid_upload_leaves_no_object_and_a_relaunch_completes(s3_server):
    url = f"{s3_server.new_bucket()}/out/big.txt"
    bucket, key = url.removeprefix("s3://").split("/", 1)
    client = s3_server.client()
    args = [sys.executable, "-c", WRITER.format(half=BIG_TEXT_BYTES // 2), url]
    proc = subprocess.Popen(args, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:  # kill once the multipart upload holds a part: data sent, object not complete
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        if uploads and client.list_parts(Bucket=bucket, Key=key, UploadId=uploads[0]["UploadId"]).get("Parts"):
            break
        assert proc.poll() is None, "the writer finished before it could be killed; write more"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0  # nothing under the final name, nor any other
    relaunch = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert relaunch.returncode == 0, relaunch.stderr[-2000:]
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    assert stamp(url)[1] == BIG_TEXT_BYTES
    assert file_sha256(url) == big_text_sha256()


@pytest.fixture
def wrong_credentials(s3_server, monkeypatch):
    """The environment with a secret the server does not accept (the right key id)."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    S3FileSystem.clear_instance_cache()
    yield
    S3FileSystem.clear_instance_cache()


def one_line(error: pytest.ExceptionInfo, url: str, problem: str) -> str:
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{url}: ") and problem in message, message
    return message


def test_wrong_credentials_give_one_line_naming_the_url(inputs, wrong_credentials):
    url, _ = inputs
    with pytest.raises(InputError) as listing:
        list_input_files([url])
    assert "AWS_ACCESS_KEY_ID" in one_line(listing, url, "access denied")
    errors = []
    assert list(iter_readable([f"{url}/{PARTS[0].name}"], on_error=lambda *e: errors.append(e))) == []
    assert len(errors) == 1 and errors[0][1].startswith(f"{url}/{PARTS[0].name}: access denied") and errors[0][2] == 0
    with pytest.raises(StorageError) as writing:
        write_json({}, f"{url}/out.json")
    one_line(writing, f"{url}/out.json", "cannot write: access denied")
    with pytest.raises(StorageError) as stamping:
        stamp(f"{url}/{PARTS[0].name}")
    one_line(stamping, f"{url}/{PARTS[0].name}", "access denied")


def test_missing_bucket_gives_one_line_naming_the_url(s3_server, tmp_path):
    url = "s3://no-such-bucket-curate/in"
    with pytest.raises(InputError) as listing:
        list_input_files([url])
    one_line(listing, url, "no such bucket")
    errors = []
    assert list(iter_readable([f"{url}/a.parquet"], on_error=lambda *e: errors.append(e))) == []
    assert errors[0][1].startswith(f"{url}/a.parquet: no such bucket")
    with pytest.raises(StorageError) as writing:
        write_parquet(pq.read_table(PARTS[0]), f"{url}/out.parquet")
    one_line(writing, f"{url}/out.parquet", "cannot write: no such bucket")
    result = run_curate("score", url, "--model", tmp_path / "model.bin", "--out", tmp_path / "scores", timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    expected = f"error: {url}: no such bucket (The specified bucket does not exist)"
    assert result.returncode == 2 and errors == [expected], result.stderr[-2000:]


def test_no_credentials_at_all_is_one_line_from_the_cli(inputs, tmp_path):
    url, _ = inputs
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    nowhere = str(tmp_path / "none")  # no ~/.aws files either
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=nowhere, AWS_SHARED_CREDENTIALS_FILE=nowhere)
    result = run_curate("score", url, "--model", tmp_path / "model.bin", "--out", tmp_path / "scores", env=env,
                        timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert errors[0].startswith(f"error: {url}: no credentials found") and "AWS_ACCESS_KEY_ID" in errors[0]


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL"])
def test_endpoint_comes_from_the_environment(inputs, s3_server, variable):
    url, _ = inputs
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL_S3"}
    env[variable] = s3_server.endpoint
    code = f"from curate.io import list_input_files; print(len(list_input_files([{url!r}])))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "6", result.stderr[-2000:]
