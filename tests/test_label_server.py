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
from tests.llm_server import (
    LlamaServer, RecordingProxy, answered_once_each, kill_server_mid_run, require_llama_cpp,
)

pytestmark = pytest.mark.slow

MODEL = ["--model", "smollm2", "--max-doc-tokens", "40"]
GEN = ["--max-tokens", "48", "--max-quotes", "0", "--concurrency", "1"]  # counts only: short answers
SMALL = MODEL + GEN
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
    labels = read_labels(out / LABELS_FILE)
    ids, counts = labels.ids, labels.counts
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
                            "--max-error-rate", "1", *MODEL, "--max-tokens", "4", "--max-quotes", "0", "--concurrency", "1")
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
                            "--request-timeout", "15", "--max-error-rate", "1", *SMALL)
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
                        *MODEL, "--max-tokens", "24", "--concurrency", "1")
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
        returncode, stderr, answered_before = kill_server_mid_run(command, server, proxy, REPO)
        assert returncode == 1
        assert "run the same command again to resume" in stderr

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
    answered_once_each(proxy, 4, answered_before, n_before)
    assert pq.read_table(out / LABELS_FILE).num_rows == 4
    assert json.loads((out / STATS_FILE).read_text())["this_run"]["documents"] == 4 - len(answered_before)


def _stand_in_vllm_env(tmp_path, delay_s: float = 0) -> dict:
    """PATH and PYTHONPATH with tests/bin's `vllm` (maps `vllm serve` onto llama.cpp; its python3 is this venv's)."""
    path = os.pathsep.join([str(REPO / "tests" / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])
    return {**os.environ, "PATH": path, "CURATE_TEST_VLLM_START_DELAY": str(delay_s),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests" / "bin" / "pyshim"),
                                                        os.environ.get("PYTHONPATH")])),
            "VLLM_COMPILE_LOCK_DIR": str(tmp_path / "locks")}


def test_vllm_server_type_starts_and_stops_the_server_through_datatrove(gsm_sample, tmp_path):
    """datatrove's VLLMServer runs `vllm serve MODEL --port P ...`; tests/bin/vllm maps it onto llama.cpp."""
    require_llama_cpp()
    from curate.tokens import smollm2_gguf_path

    out = tmp_path / "labels"
    result = run_curate("label", _subset(gsm_sample, tmp_path, 2, 1), "--out", out, "--server-type", "vllm",
                        "--model", smollm2_gguf_path(), "--max-model-len", "2048", "--server-ready-timeout", "180",
                        "--engine", "llama.cpp",  # the stand-in is llama.cpp: its parameter names, json_object
                        "--server-args", '{"enforce-eager": true, "gpu-memory-utilization": 0.5}',
                        *MODEL[2:], *GEN, env=_stand_in_vllm_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["documents"] == 1 and stats["prompt_tokens_per_document"] > 0
    log = "".join(p.read_text() for p in (out / "logs" / "label" / "work" / "server_logs").glob("*.log"))
    assert "Uvicorn running" in log
    assert "--enforce-eager --gpu-memory-utilization=0.5" in log  # label.server_args reached `vllm serve`
    assert list((tmp_path / "locks").glob("vllm_compile_*.lock"))  # datatrove's compile lock, where we put it


def test_a_slow_vllm_start_does_not_count_against_the_request_timeout(gsm_sample, tmp_path):
    """The stand-in `vllm` takes 25 s to start and a request may take 8 s: requests wait for the server
    (never cancelling what they all wait on), then label everything. A server not ready within
    server_ready_timeout stops the run in one line, and the same command run again labels."""
    require_llama_cpp()
    from curate.tokens import smollm2_gguf_path

    sample, out = _subset(gsm_sample, tmp_path, 0, 2), tmp_path / "labels"
    command = ["label", sample, "--out", out, "--server-type", "vllm", "--model", smollm2_gguf_path(), "--engine",
               "llama.cpp", "--max-model-len", "2048", "--request-timeout", "8", *MODEL[2:], *GEN[:-1], "2"]
    env = _stand_in_vllm_env(tmp_path, delay_s=25)
    started = time.monotonic()
    too_short = run_curate(*command, "--server-ready-timeout", "4", env=env)
    assert too_short.returncode == 1 and time.monotonic() - started < 20
    last = too_short.stderr.strip().splitlines()[-1]
    assert last.startswith("error: labeling: stopped after 0 documents: vllm serve ") and "not ready within 4s" in last

    started = time.monotonic()
    result = run_curate(*command, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started > 25
    labels = pq.read_table(out / LABELS_FILE).to_pylist()
    assert len(labels) == 2 and all(r["error"] is None or r["error"].startswith("unparseable") for r in labels)


def test_job_runs_sample_then_label_and_hands_the_labels_to_train(llama_server, gsm_sample, tmp_path):
    """`curate run`'s first stages: sample -> label (skipped when current); train reads their labels."""
    from curate.config import load_job
    from curate.layout import Layout
    from curate.stages import run_job, train_labels
    from tests.helpers import write_job

    path = write_job(tmp_path / "job.yaml", name="t", output_dir=str(tmp_path / "out"),
                     input={"paths": [str(gsm_sample)]}, sample={"n": 2},
                     label={"endpoint_url": llama_server.url, "model": "smollm2", "max_doc_tokens": 40,
                            "max_tokens": 48, "max_quotes": 0, "concurrency": 1})
    for expected in (True, False):
        job = load_job(path)
        results = run_job(job, only={"sample", "label"})
        assert [(r.stage, r.ran) for r in results] == [("sample", expected), ("label", expected)], results
    [labels_path] = train_labels(job, Layout(job.out))
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
    from curate.inference import claim_work_dir

    work = tmp_path / "work"
    claim_work_dir(work, "f1")
    markers = work / "checkpoints" / "last_chunk"
    markers.mkdir(parents=True)
    (markers / "00000.txt").write_text("")
    (markers / "00001.txt").write_text("3")
    claim_work_dir(work, "f1")  # same settings: resume
    assert not (markers / "00000.txt").exists() and (markers / "00001.txt").read_text() == "3"


def test_quotes_are_requested_validated_and_only_real_ones_reach_training(llama_server, gsm_sample, tmp_path):
    """The labeler is asked for quotes (instruction and schema); the proxy adds to SmolLM2's real answer a
    quote from the document (upper-cased) and an invented one: the first is kept as the document writes it,
    in the form training reads; the invented one is counted and never kept."""
    from tests.llm_server import INVENTED_QUOTE

    proxy = RecordingProxy(llama_server.url, faults=["quote"]).start()
    sample, out = _subset(gsm_sample, tmp_path, 1, 2), tmp_path / "labels"
    try:
        result = run_curate("label", sample, "--out", out, "--endpoint-url", proxy.url, *MODEL, "--max-tokens", "160",
                            "--concurrency", "1")
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    body = proxy.records[0]["body"]
    assert "up to 3 quotes" in body["messages"][0]["content"]
    quotes = body["response_format"]["schema"]["properties"]["quotes"]["properties"]
    assert all(quotes[b]["maxItems"] == 3 for b in BEHAVIORS)
    assert body["repeat_penalty"] == 1.0 and body["temperature"] == 0.0 and body["top_p"] == 1.0

    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["quotes"]["invented"] >= 1 and stats["quotes"]["kept"] >= 1
    assert stats["invented_quote_rate"] == stats["quotes"]["invented"] / stats["quotes"]["returned"]
    rows = {r["id"]: r for r in pq.read_table(out / LABELS_FILE).to_pylist()}
    quoted = rows[pq.read_table(sample)["id"][0].as_py()]
    evidence = json.loads(quoted["raw_response"])["evidence"]
    first = BEHAVIORS[0]
    assert evidence[first][0] == quoted["text"][:30]  # the document's own text, not the upper-cased copy
    assert list(evidence) == list(BEHAVIORS) and INVENTED_QUOTE not in json.dumps(evidence)
    assert INVENTED_QUOTE in json.loads(quoted["raw_response"])["response"]  # the raw answer stays for audit
    for row in rows.values():  # every kept quote is in its document
        for quotes in json.loads(row["raw_response"])["evidence"].values():
            assert all(q in row["text"] for q in quotes)
    from curate.labels import read_labels
    labels = read_labels(out / LABELS_FILE)
    assert {first: [quoted["text"][:30]]}.items() <= labels.evidence[labels.ids.index(quoted["id"])].items()


def test_endpoint_urls_work_with_or_without_v1_local_or_remote(llama_server, gsm_sample, tmp_path):
    """datatrove posts raw HTTP to http://127.0.0.1 / localhost and goes through the OpenAI client for any
    other host (127.0.0.2 is loopback, but not one of the names datatrove takes for local)."""
    require_llama_cpp()
    remote = LlamaServer(tmp_path / "server.log", host="127.0.0.2").start()
    sample = _subset(gsm_sample, tmp_path, 0, 1)
    urls = [remote.url, remote.url + "/v1/", llama_server.url.replace("127.0.0.1", "localhost") + "/v1"]
    try:
        for i, url in enumerate(urls):
            result = run_curate("label", sample, "--out", tmp_path / f"out{i}", "--endpoint-url", url, *SMALL)
            assert result.returncode == 0, (url, result.stderr[-2000:])
            [row] = pq.read_table(tmp_path / f"out{i}" / LABELS_FILE).to_pylist()
            assert row["raw_response"] and (row["error"] is None or row["error"].startswith("unparseable")), url
    finally:
        remote.stop()


def test_an_unreachable_server_is_one_line_naming_the_url_fast(llama_server, gsm_sample, tmp_path):
    import socket

    from tests.llm_server import free_port

    sample = _subset(gsm_sample, tmp_path, 0, 1)
    silent = socket.socket()  # accepts connections (the kernel does), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    nothing = f"http://127.0.0.1:{free_port()}"
    cases = [(nothing, f"{nothing}/v1/models: connection refused", 20, []),
             (llama_server.url + "/nope", f"{llama_server.url}/nope/v1/models: HTTP 404 Not Found", 20, []),
             (f"http://127.0.0.1:{silent.getsockname()[1]}/v1", "no answer within 5s", 30,
              ["--server-ready-timeout", "2"])]
    try:
        for url, expected, seconds, extra in cases:
            started = time.monotonic()
            result = run_curate("label", sample, "--out", tmp_path / "out", "--endpoint-url", url, *SMALL, *extra)
            took = time.monotonic() - started
            last = result.stderr.strip().splitlines()[-1]
            assert result.returncode == 1 and expected in last and took < seconds, (url, took, last)
            assert last.startswith("error: labeling: stopped after 0 documents: ")
    finally:
        silent.close()


def test_a_run_whose_requests_fail_exits_nonzero_and_a_rerun_asks_again(llama_server, gsm_sample, tmp_path):
    """Every request answered HTTP 400: the run stops after the first 2 documents (stop_after_failures),
    exits 1 and records nothing as done. Run again with 1 document of 3 failing: more than 5% failed, exit 1,
    the 2 others are kept. Run again: only the failed document is asked, and the labels are complete."""
    sample, out = _subset(gsm_sample, tmp_path, 0, 3), tmp_path / "labels"
    ids = pq.read_table(sample)["id"].to_pylist()
    command = ["label", sample, "--out", out, *SMALL, "--stop-after-failures", "2"]
    records: list = []
    proxy = RecordingProxy(llama_server.url, faults=["400"] * 3, records=records).start()
    try:
        first = run_curate(*command, "--endpoint-url", proxy.url)
        last = first.stderr.strip().splitlines()[-1]
        assert first.returncode == 1 and "the first 2 documents all failed" in last and "HTTP 400" in last, last
        assert [r["status"] for r in records] == [400, 400]  # stopped at once: the third was never asked
        assert not (out / LABELS_FILE).exists()
        proxy.faults = ["400"]
        second = run_curate(*command, "--endpoint-url", proxy.url)
        last = second.stderr.strip().splitlines()[-1]
        assert second.returncode == 1 and "1 of 3 documents failed (more than max_error_rate 0.05)" in last, last
        assert [r["status"] for r in records[2:]] == [400, 200, 200]  # all asked again
        failed_doc = records[2]["doc"]
        third = run_curate(*command, "--endpoint-url", proxy.url)
        assert third.returncode == 0, third.stderr[-2000:]
        assert [(r["doc"], r["status"]) for r in records[5:]] == [(failed_doc, 200)]  # only the failed one
    finally:
        proxy.stop()
    labels = pq.read_table(out / LABELS_FILE)
    assert sorted(labels["id"].to_pylist()) == sorted(ids)
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["request_errors"] == 0 and stats["documents"] == 3
    assert run_curate(*command, "--endpoint-url", llama_server.url).stdout.startswith("skipped")


def test_llm_start_and_stop_scripts_record_and_stop_the_real_server(tmp_path):
    require_llama_cpp()
    from tests.llm_server import free_port

    port, folder = free_port(), tmp_path / "llm"
    env = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parent.parent)}
    started = subprocess.run(["bash", "llm/start.sh", str(port), str(folder)], cwd=REPO, capture_output=True,
                             text=True, timeout=240, env=env)
    assert started.returncode == 0, started.stderr
    pid = int((folder / "server.pid").read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"llama_cpp.server" in cmdline and str(port).encode() in cmdline  # the server itself, no wrapper
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
            assert r.status == 200
        again = subprocess.run(["bash", "llm/start.sh", str(port), str(folder)], cwd=REPO, capture_output=True,
                               text=True, timeout=60, env=env)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stopped = subprocess.run(["bash", "llm/stop.sh", str(folder)], cwd=REPO, capture_output=True, text=True,
                                 timeout=60)
    assert stopped.returncode == 0 and f"stopped PID {pid}" in stopped.stdout
    assert not Path(f"/proc/{pid}").exists() and not (folder / "server.pid").exists()


def test_dry_run_prints_the_vllm_command_and_a_request_and_starts_nothing(gsm_sample, tmp_path):
    out = tmp_path / "labels"
    result = run_curate("label", gsm_sample, "--out", out, "--server-type", "vllm", "--model",
                        "Qwen/Qwen2.5-32B-Instruct", "--tp", "2", "--server-args", '{"gpu-memory-utilization": 0.9}',
                        "--dry-run", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    command = next(line for line in lines if line.startswith("vllm serve "))
    assert command.startswith("vllm serve Qwen/Qwen2.5-32B-Instruct --port PORT --max-model-len 8192 ")
    for flag in ("--gpu-memory-utilization=0.9", "--tensor-parallel-size=2", "disable_any_whitespace"):
        assert flag in command
    body = json.loads(lines[-1])
    first = pq.read_table(gsm_sample)["text"][0].as_py()
    assert body["messages"][-1]["content"] == first and body["model"] == "Qwen/Qwen2.5-32B-Instruct"
    assert body["response_format"]["type"] == "json_schema"
    assert body["repetition_penalty"] == 1.0 and body["top_k"] == -1 and body["temperature"] == 0.0
    assert not out.exists()  # nothing written, nothing started
