"""`curate label` against a real LLM server: llama.cpp serving SmolLM2-135M-Instruct on loopback.

The documents are short GSM8K ones from the reference labels (so `eval-labels` has overlap), cut to
a few dozen tokens: the server reads prompts at about 100 tokens/s on the CI machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate.schema import BEHAVIORS, LABELS_SCHEMA
from tests.helpers import REPO, run_curate
from tests.llm_server import LlamaServer, RecordingProxy, require_llama_cpp

pytestmark = pytest.mark.slow

SMALL = ["--model", "smollm2", "--max-doc-tokens", "40", "--max-tokens", "48", "--concurrency", "1"]
LABELS_FILE, STATS_FILE = Path("labels") / "labels.parquet", Path("logs") / "label" / "stats.json"  # in --out


@pytest.fixture(scope="module")
def gsm_sample(shared_dir, tmp_path_factory):
    """The 6 shortest GSM8K documents of the reference labels, through `curate sample`."""
    gold = pq.read_table(shared_dir / "labels" / "gold.parquet")
    gsm = gold.filter(pc.starts_with(gold["url"], "gsm8k"))
    gsm = gsm.take(pc.sort_indices(pc.utf8_length(gsm["text"]))).slice(0, 6)
    folder = tmp_path_factory.mktemp("gsm")
    pq.write_table(gsm.select(["url", "text"]), folder / "docs.parquet")
    result = run_curate("sample", folder / "docs.parquet", "--out", folder, "--n", "6")
    assert result.returncode == 0, result.stderr
    return folder / "sample" / "sample.parquet"


def _subset(sample, tmp_path, start, n):
    path = tmp_path / f"sample-{start}-{n}.parquet"
    pq.write_table(pq.read_table(sample).slice(start, n), path)
    return path


def test_label_endpoint_retries_5xx_writes_labels_and_skips_when_current(llama_server, gsm_sample, shared_dir,
                                                                         tmp_path):
    proxy = RecordingProxy(llama_server.url, faults=["500"]).start()
    sample, out = _subset(gsm_sample, tmp_path, 0, 3), tmp_path / "labels"
    try:
        result = run_curate("label", sample, "--out", out, "--endpoint-url", proxy.url, *SMALL)
        assert result.returncode == 0, result.stderr[-3000:]
        first = list(proxy.records)
        # the injected HTTP 500 was retried: the first document was asked twice, then answered once
        assert [r["status"] for r in first[:2]] == [500, 200] and first[0]["doc"] == first[1]["doc"]
        assert Counter(proxy.answered()) == Counter({doc: 1 for doc in set(proxy.answered())})
        assert len(proxy.answered()) == 3

        rerun = run_curate("label", sample, "--out", out, "--endpoint-url", proxy.url, *SMALL)
        assert rerun.returncode == 0 and "skipped" in rerun.stdout
        assert proxy.records == first  # nothing asked again
    finally:
        proxy.stop()

    labels = pq.read_table(out / LABELS_FILE)
    assert labels.schema.equals(LABELS_SCHEMA)
    assert sorted(labels["id"].to_pylist()) == sorted(pq.read_table(sample)["id"].to_pylist())
    for row in labels.to_pylist():
        assert row["raw_response"], row
        assert row["labeler"] == "smollm2" and row["prompt_version"].startswith("counts-")
        if row["error"] is None:  # a parsed answer has all four counts, none invented when it did not parse
            assert all(isinstance(row[b], int) and row[b] >= 0 for b in BEHAVIORS)
        else:
            assert row["error"].startswith("unparseable answer")
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["documents"] == 3 and stats["this_run"]["requests"] == 3
    assert 0 <= stats["parse_failure_rate"] <= 1 and stats["prompt_tokens_per_document"] > 40
    assert stats["completion_tokens_per_document"] > 0 and stats["this_run"]["requests_per_second"] > 0

    from curate.labels import read_labels  # the train stage reads this file as it is
    ids, _texts, counts, *_ = read_labels(out / LABELS_FILE)
    assert len(ids) + stats["parse_failures"] >= 3 and counts.shape[1] == len(BEHAVIORS)

    agreement = run_curate("eval-labels", out / LABELS_FILE, "--reference", shared_dir / "labels" / "gold.parquet")
    assert agreement.returncode == 0 and "3 documents in both files" in agreement.stdout


def test_bad_answers_are_kept_as_errors_with_raw_text(llama_server, gsm_sample, tmp_path):
    # document 1: the "server" answers HTTP 200 with a body that is not JSON, twice (retries=1): a request error
    # document 2: 4 completion tokens cut the JSON short: a parse failure, raw text kept, counts null
    proxy = RecordingProxy(llama_server.url, faults=["garbage", "garbage"]).start()
    sample, out = _subset(gsm_sample, tmp_path, 3, 2), tmp_path / "labels"
    try:
        result = run_curate("label", sample, "--out", out, "--endpoint-url", proxy.url, "--retries", "1",
                            *SMALL[:4], "--max-tokens", "4", "--concurrency", "1")
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["id"]: r for r in pq.read_table(out / LABELS_FILE).to_pylist()}
    first, second = (rows[i] for i in pq.read_table(sample)["id"].to_pylist())
    assert first["error"].startswith("request failed after 2 attempts") and first["raw_response"] is None
    assert second["error"].startswith("unparseable answer") and second["raw_response"].startswith("{")
    for row in (first, second):
        assert all(row[b] is None for b in BEHAVIORS)  # never a zero for an answer that was not read
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["parse_failures"] == 1 and stats["request_errors"] == 1 and stats["parse_failure_rate"] == 0.5


def test_stalled_and_closed_requests_are_retried_then_recorded_as_failed(llama_server, gsm_sample, tmp_path):
    # document 1: the server stalls past the request timeout (15 s: a real answer takes a few seconds here),
    # then closes the connection on the retry: after 2 attempts it is recorded as failed with the reason;
    # document 2 is answered normally
    proxy = RecordingProxy(llama_server.url, faults=["stall", "close"], stall_s=25).start()
    sample, out = _subset(gsm_sample, tmp_path, 3, 2), tmp_path / "labels"
    try:
        result = run_curate("label", sample, "--out", out, "--endpoint-url", proxy.url, "--retries", "1",
                            "--request-timeout", "15", *SMALL)
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["status"] for r in proxy.records] == ["stall", "close", 200]
    assert proxy.records[0]["doc"] == proxy.records[1]["doc"] != proxy.records[2]["doc"]
    rows = {r["id"]: r for r in pq.read_table(out / LABELS_FILE).to_pylist()}
    first, second = (rows[i] for i in pq.read_table(sample)["id"].to_pylist())
    assert first["error"].startswith("request failed after 2 attempts") and all(first[b] is None for b in BEHAVIORS)
    assert second["raw_response"] and (second["error"] is None or second["error"].startswith("unparseable answer"))
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["request_errors"] == 1 and stats["documents"] == 2


def test_paper_layout_asks_four_times_per_document(llama_server, gsm_sample, tmp_path):
    sample, out = _subset(gsm_sample, tmp_path, 5, 1), tmp_path / "labels"
    result = run_curate("label", sample, "--out", out, "--endpoint-url", llama_server.url, "--prompt", "paper",
                        *SMALL[:4], "--max-tokens", "24")
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = pq.read_table(out / LABELS_FILE).to_pylist()
    assert set(json.loads(row["raw_response"])) == set(BEHAVIORS)
    assert row["prompt_version"].startswith("paper-")
    for b in BEHAVIORS:  # each behavior: a count read from <count> tags, or named in the error
        assert (row[b] is not None) != (b in (row["error"] or ""))
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["requests_per_document"] == 4 and stats["this_run"]["requests"] == 4


def test_killed_server_run_resumes_without_asking_a_finished_document_again(gsm_sample, tmp_path):
    require_llama_cpp()
    server = LlamaServer(tmp_path / "server.log").start()
    proxy = RecordingProxy(server.url).start()
    out = tmp_path / "labels"
    command = [sys.executable, "-m", "curate", "label", str(_subset(gsm_sample, tmp_path, 0, 4)), "--out", str(out),
               "--endpoint-url", proxy.url, "--records-per-chunk", "2", "--retries", "1", *SMALL]
    try:
        first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while len(proxy.answered()) < 2 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert len(proxy.answered()) >= 2, "the labeler did not get two answers"
        server.kill()  # SIGKILL, mid-run: the labeler is waiting for its next answer
        proxy.stop()
        _stdout, stderr = first.communicate(timeout=120)
        assert first.returncode == 1
        assert "run the same command again to resume" in stderr
        answered_before = set(proxy.answered())

        server = LlamaServer(tmp_path / "server.log").start()
        proxy = RecordingProxy(server.url, port=proxy.port, records=proxy.records).start()
        started = time.monotonic()
        n_before = len(proxy.records)
        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
        resumed_after = proxy.records[n_before]["time"] - started
        print(f"resume: first new request {resumed_after:.1f}s after the re-run started")
    finally:
        server.stop()
        proxy.stop()
    answered = proxy.answered()
    assert len(set(answered)) == 4 and Counter(answered).most_common(1)[0][1] == 1  # each answered exactly once
    assert not answered_before & {r["doc"] for r in proxy.records[n_before:]}  # finished ones never asked again
    assert pq.read_table(out / LABELS_FILE).num_rows == 4
    assert json.loads((out / STATS_FILE).read_text())["this_run"]["documents"] == 4 - len(answered_before)


def test_vllm_server_type_starts_and_stops_the_server_through_datatrove(gsm_sample, tmp_path):
    """datatrove's VLLMServer runs `vllm serve MODEL --port P ...`; tests/bin/vllm maps it onto llama.cpp."""
    require_llama_cpp()
    from curate.tokens import smollm2_gguf_path

    env = {**os.environ, "PATH": f"{REPO / 'tests' / 'bin'}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests" / "bin" / "pyshim"),
                                                       os.environ.get("PYTHONPATH")])),
           "VLLM_COMPILE_LOCK_DIR": str(tmp_path / "locks")}
    out = tmp_path / "labels"
    result = run_curate("label", _subset(gsm_sample, tmp_path, 2, 1), "--out", out, "--server-type", "vllm",
                        "--model", smollm2_gguf_path(), "--max-model-len", "2048", "--server-ready-timeout", "180",
                        "--structured-output", "json_object",  # llama.cpp answers HTTP 500 to json_schema
                        *SMALL[2:], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["documents"] == 1 and stats["prompt_tokens_per_document"] > 0
    logs = list((out / "logs" / "label" / "work" / "server_logs").glob("*.log"))
    assert logs and "Uvicorn running" in "".join(p.read_text() for p in logs)


def test_job_runs_sample_then_label_and_hands_the_labels_to_train(llama_server, gsm_sample, tmp_path):
    """`curate run`'s first stages: sample -> label (skipped when current); train reads their labels."""
    from curate.config import load_job
    from curate.layout import Layout
    from curate.stages import run_job, train_labels
    from tests.helpers import write_job

    path = write_job(tmp_path / "job.yaml", name="t", output_dir=str(tmp_path / "out"),
                     input={"paths": [str(gsm_sample)]}, sample={"n": 2},
                     label={"endpoint_url": llama_server.url, "model": "smollm2", "max_doc_tokens": 40,
                            "max_tokens": 48, "concurrency": 1})
    for expected in (True, False):
        job = load_job(path)
        results = run_job(job, only={"sample", "label"})
        assert [(r.stage, r.ran) for r in results] == [("sample", expected), ("label", expected)], results
    labels_path = train_labels(job, Layout(job.out))
    assert labels_path == tmp_path / "out" / LABELS_FILE and job.train.labels is None  # the job is not changed
    assert pq.read_table(labels_path).num_rows == 2
    audit = run_curate("audit", tmp_path / "out")  # sample and label stages accounted for
    assert audit.returncode == 0 and "sample  OK" in audit.stdout and "label   OK" in audit.stdout, audit.stdout
    labels = pq.read_table(labels_path)
    pq.write_table(labels.slice(0, 1), labels_path)  # a sampled document lost between the stages
    audit = run_curate("audit", tmp_path / "out")
    assert audit.returncode == 1 and "sampled ids missing from the labels: 1 != 0" in audit.stdout, audit.stdout


def test_label_job_files_validate():
    from curate.config import JobError, load_job

    for name in ("label-local.yaml", "label-qwen32b.yaml"):
        job = load_job(REPO / "jobs" / name)
        assert job.label is not None and job.sample is not None and job.train.labels is None
    assert load_job(REPO / "jobs" / "label-qwen32b.yaml").label.tp == 2
    with pytest.raises(JobError, match="endpoint_url"):
        bad = REPO / "jobs" / "label-local.yaml"
        import yaml
        raw = yaml.safe_load(bad.read_text())
        del raw["label"]["endpoint_url"]
        tmp = Path(tempfile.mkdtemp()) / "bad.yaml"
        tmp.write_text(yaml.safe_dump(raw))
        load_job(tmp)


def test_a_chunk_marker_emptied_by_a_kill_does_not_block_resuming(tmp_path):
    """datatrove rewrites last_chunk/RANK.txt in place; a kill at that instant leaves it empty."""
    from curate.label import _claim_work_dir

    work = tmp_path / "work"
    _claim_work_dir(work, "f1")
    markers = work / "checkpoints" / "last_chunk"
    markers.mkdir(parents=True)
    (markers / "00000.txt").write_text("")
    (markers / "00001.txt").write_text("3")
    _claim_work_dir(work, "f1")  # same settings: resume
    assert not (markers / "00000.txt").exists() and (markers / "00001.txt").read_text() == "3"
