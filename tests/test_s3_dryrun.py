"""The dry run with its inputs and its data outputs in an S3 bucket, against moto's S3 server (a
real HTTP server on loopback, started by tests/s3_server.py): the same mix as a local run, a
`file://` URL run, and a kill during a remote write that leaves no object and a relaunch that
completes identically."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import BUNDLED_DOCS, REPO
from tests.helpers import big_input, run_curate

pytestmark = pytest.mark.slow


def dryrun(tmp: Path, name: str, inputs: str, data_dir: str | None, **mix) -> Path:
    """jobs/dryrun.yaml with other inputs, its output in tmp/name and its data outputs in `data_dir`."""
    job = {"extends": str(REPO / "jobs" / "dryrun.yaml"), "output_dir": str(tmp / name), "input": {"paths": [inputs]},
           "export": {"formats": ["parquet", "jsonl"], "mixes": ["mix", "control"]}}
    if data_dir:
        job["data_dir"] = data_dir
    if mix:
        job["mix"] = mix
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def table_of(fs_paths: list[str], fs=None) -> pa.Table:
    return pa.concat_tables([pq.read_table(p, filesystem=fs) for p in sorted(fs_paths)])


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("local")
    result = run_curate("run", dryrun(tmp, "out", str(BUNDLED_DOCS), None), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "out"


def test_dry_run_reads_and_writes_s3_and_gives_the_local_mix(s3_server, local_run, tmp_path):
    import s3fs

    bucket = s3_server.new_bucket()
    fs = s3fs.S3FileSystem()
    for f in sorted(BUNDLED_DOCS.glob("*.parquet")):
        fs.put_file(str(f), f"{bucket}/in/{f.name}")
    result = run_curate("run", dryrun(tmp_path, "out", f"{bucket}/in", f"{bucket}/run"), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for folder in ("mix", "control"):
        remote = fs.glob(f"{bucket}/run/{folder}/data/*.parquet")
        assert remote, folder
        assert table_of(remote, fs).equals(table_of([str(p) for p in (local_run / folder / "data").glob("*.parquet")]))
        assert fs.exists(f"{bucket}/run/{folder}/README.md") and fs.exists(f"{bucket}/run/{folder}/stats.json")
    assert len(fs.glob(f"{bucket}/run/scores/*.parquet")) == 2 and not fs.glob(f"{bucket}/run/scores/.*")
    assert fs.exists(f"{bucket}/run/filters/drops.parquet")
    assert fs.glob(f"{bucket}/run/export/mix/jsonl/data/*.jsonl")
    assert not (tmp_path / "out" / "scores").exists() and (tmp_path / "out" / "logs" / "score").is_dir()
    audit = run_curate("audit", tmp_path / "out", "--data-dir", f"{bucket}/run")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    again = run_curate("run", dryrun(tmp_path, "out", f"{bucket}/in", f"{bucket}/run"), timeout=900)
    assert again.returncode == 0 and "ran: nothing" in again.stdout, again.stdout


def test_file_url_run_gives_the_local_mix(local_run, tmp_path):
    result = run_curate("run", dryrun(tmp_path, "out", BUNDLED_DOCS.as_uri(), (tmp_path / "data").as_uri()),
                        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = sorted((tmp_path / "data" / "mix" / "data").glob("*.parquet"))
    assert shards and table_of([str(p) for p in shards]).equals(
        table_of([str(p) for p in (local_run / "mix" / "data").glob("*.parquet")]))


def test_a_kill_during_a_remote_write_leaves_no_object_and_a_relaunch_completes_identically(s3_server, tmp_path):
    """The scores of a large input go to S3; SIGKILL while the scorer writes leaves no final shard (the
    writer's temporary object is hidden and renamed at the end), and the relaunch gives the same scores
    as an uninterrupted run."""
    import s3fs

    bucket = s3_server.new_bucket()
    fs = s3fs.S3FileSystem()
    big = big_input(tmp_path / "big.parquet", copies=100)
    model = tmp_path / "clf"
    trained = run_curate("train", REPO / "curate" / "data" / "labels" / "gold.parquet", model, "--epoch", "3",
                         "--cv-folds", "2")
    assert trained.returncode == 0, trained.stderr[-2000:]
    args = [sys.executable, "-m", "curate", "score", str(big), "--out", str(tmp_path / "killed"), "--data-dir",
            f"{bucket}/killed", "--model", str(model / "classifier" / "model.bin"), "--tasks", "1", "--workers", "1"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env=dict(os.environ, CURATE_PROGRESS_SECONDS="0.2"))
    deadline = time.monotonic() + 300
    progress = tmp_path / "killed" / "logs" / "score" / "datatrove" / "logs"
    while not (lines := [line for p in progress.glob("*.log") for line in p.read_text().splitlines()
                         if "rank 0 read:" in line]):  # documents are flowing
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "done in" not in lines[0], "scoring finished reading before it could be killed; make the input bigger"
    fs.invalidate_cache()
    assert not fs.glob(f"{bucket}/killed/scores/[0-9]*.parquet")  # nothing a later stage would read
    relaunch = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert relaunch.returncode == 0, relaunch.stderr[-2000:]
    clean = run_curate("score", big, "--out", tmp_path / "clean", "--model", model / "classifier" / "model.bin",
                       "--tasks", "1", "--workers", "1", timeout=900)
    assert clean.returncode == 0, clean.stderr[-2000:]
    fs.invalidate_cache()
    remote = table_of(fs.glob(f"{bucket}/killed/scores/*.parquet"), fs)
    assert remote.num_rows == 100 * 600 and remote.equals(pq.read_table(tmp_path / "clean" / "scores"))
