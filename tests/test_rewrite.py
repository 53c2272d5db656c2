"""`curate rewrite` against a real LLM server: llama.cpp serving SmolLM2-135M-Instruct on loopback.

The job: the 6 shortest GSM8K documents of the reference labels, a classifier trained on the bundled labels,
a threshold-0 mix with 2 or 3 copies of each document, then each document rewritten (cut to 60 tokens, at
most 128 completion tokens). SmolLM2 rewrites badly and some of its answers run past max_tokens: the tests
check the mechanics (requests, rows, failures, stats, card, resume, skipping, export), not the rewrites.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from curate.schema import BEHAVIORS, REWRITE_SCHEMA
from tests.helpers import REPO, read_dir, run_curate, write_job
from tests.llm_server import (
    LlamaServer, RecordingProxy, answered_once_each, document_key, kill_server_mid_run, require_llama_cpp,
)

BUNDLED_LABELS = REPO / "curate" / "data" / "labels" / "gold.parquet"
MAX_DOC_TOKENS, MAX_TOKENS = 60, 128
SMALL = ["--model", "smollm2", "--max-doc-tokens", str(MAX_DOC_TOKENS), "--concurrency", "1"]
STATS = Path("logs") / "rewrite" / "stats.json"


@pytest.fixture(scope="module")
def gsm_docs(shared_dir, tmp_path_factory) -> Path:
    """The 6 shortest GSM8K documents of the reference labels, as an input file."""
    gold = pq.read_table(shared_dir / "labels" / "gold.parquet")
    gsm = gold.filter(pc.starts_with(gold["url"], "gsm8k"))
    gsm = gsm.take(pc.sort_indices(pc.utf8_length(gsm["text"]))).slice(0, 6)
    path = tmp_path_factory.mktemp("gsm") / "docs.parquet"
    pq.write_table(gsm.select(["url", "text"]), path)
    return path


def rewrite_job(path: Path, docs: Path, endpoint: str, **rewrite) -> Path:
    return write_job(path, name="rw", output_dir=str(path.parent / "out"), input={"paths": [str(docs)]},
                     train={"labels": str(BUNDLED_LABELS), "epoch": 5, "cv_folds": 2},
                     score={"tasks": 1, "workers": 1}, filters={"dedup": {"enabled": False}},
                     mix={"method": "threshold", "threshold": 0.0, "token_budget": 1300, "max_repeats": 3},
                     rewrite={"endpoint_url": endpoint, "model": "smollm2", "max_doc_tokens": MAX_DOC_TOKENS,
                              "max_tokens": MAX_TOKENS, "concurrency": 1, **rewrite},
                     export={"formats": ["parquet", "jsonl"], "mixes": ["rewrite"]})


def cut_documents(mix_dir: Path) -> dict[str, str]:
    """{the proxy's key of the text each document is sent as: its id}."""
    from curate.inference import cut_to_tokens
    from curate.tokens import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    return {document_key(cut_to_tokens(r["text"], tokenizer, MAX_DOC_TOKENS)): r["id"]
            for r in read_dir(mix_dir / "data")}


@pytest.fixture(scope="module")
def job_run(llama_server, gsm_docs, tmp_path_factory):
    """`curate run` of the job through a recording proxy whose first answer is a 200 that is not JSON (with
    retries 0: a request error), then `curate run` again. Returns the job, its output, the two results and
    the requests of each run."""
    tmp = tmp_path_factory.mktemp("job")
    proxy = RecordingProxy(llama_server.url, faults=["garbage"]).start()
    job = rewrite_job(tmp / "job.yaml", gsm_docs, proxy.url, retries=0, max_error_rate=1)
    try:
        first = run_curate("run", job)
        requests = list(proxy.records)
        again = run_curate("run", job)
        requests_again = proxy.records[len(requests):]
    finally:
        proxy.stop()
    assert first.returncode == 0, first.stderr[-3000:]
    return {"job": job, "out": tmp / "out", "first": first, "again": again, "requests": requests,
            "requests_again": requests_again}


@pytest.mark.slow
def test_run_rewrites_every_selected_document_once_with_the_schema(job_run):
    out, requests = job_run["out"], job_run["requests"]
    from curate.prompts import REWRITE_INSTRUCTION, rewrite_schema

    ran = next(line for line in job_run["first"].stdout.splitlines() if line.startswith("ran: "))
    assert ran.startswith("ran: train, score, mix, rewrite, report, export;"), ran  # after mix, before report
    sent = cut_documents(out / "mix")
    assert Counter(r["doc"] for r in requests) == Counter(dict.fromkeys(sent, 1))  # each document asked once
    for record in requests:
        body = record["body"]
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert body["messages"][0]["content"] == REWRITE_INSTRUCTION
        assert body["response_format"] == {"type": "json_object", "schema": rewrite_schema()}  # llama.cpp's form
        assert body["max_tokens"] == MAX_TOKENS and body["temperature"] == 0.0 and body["repeat_penalty"] == 1.0
    assert rewrite_schema()["required"] == ["question", "thought", "answer"]


@pytest.mark.slow
def test_rows_failures_stats_and_card_are_consistent(job_run):
    from curate.rewrite import format_text
    from curate.tokens import count_tokens, load_tokenizer

    out, requests = job_run["out"], job_run["requests"]
    mix = {r["id"]: r for r in read_dir(out / "mix" / "data")}
    assert sorted(r["repeats"] for r in mix.values()) != [1] * 6  # copies to carry over
    table = pq.read_table(out / "rewrite" / "data")
    assert table.schema.equals(REWRITE_SCHEMA)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(mix) and table.num_rows == len(mix)  # one row per selected document

    garbage_doc = cut_documents(out / "mix")[requests[0]["doc"]]
    tokenizer = load_tokenizer("smollm2")
    rewritten = [r for r in rows.values() if r["error"] is None]
    assert rewritten, "SmolLM2 rewrote none of the documents: the export below has nothing to check"
    for row in rows.values():
        assert row["prompt_version"].startswith("rewrite-") and row["url"] == mix[row["id"]]["url"]
        assert row["weight"] == mix[row["id"]]["weight"]
        if row["error"] is None:
            assert all(row[f] and row[f] == row[f].strip() for f in ("question", "thought", "answer"))
            assert row["text"] == format_text(row) and row["text"].startswith("Question: ")
            assert row["n_tokens"] == count_tokens(tokenizer, [row["text"]])[0]
            assert row["repeats"] == mix[row["id"]]["repeats"] and 0 <= row["behavior_score"] <= 1
            continue
        assert row["repeats"] == 0 and row["n_tokens"] is None and row["p_verification"] is None
        assert all(row[f] is None for f in ("text", "question", "thought", "answer"))
        if row["id"] == garbage_doc:  # the non-JSON 200: a request error, nothing to keep
            assert row["raw_response"] is None and row["error"].startswith("request failed after 1 attempts")
        else:  # the model's answer did not parse: kept raw for audit
            assert row["raw_response"] and row["error"].startswith("unparseable answer")

    stats = json.loads((out / STATS).read_text())
    failed_parse = [r for r in rows.values() if r["error"] and r["raw_response"]]
    assert stats["documents"] == 6 and stats["request_errors"] == 1
    assert stats["documents_rewritten"] == len(rewritten) and stats["parse_failures"] == len(failed_parse)
    assert stats["parse_failures_cut_short"] == sum("cut short at max_tokens" in r["error"] for r in failed_parse)
    assert stats["parse_rate"] == len(rewritten) / 5 and stats["this_run"]["requests"] == 6
    assert stats["prompt_tokens_per_document"] > 300  # the instruction and the cut document
    assert 0 < stats["completion_tokens_per_document"] <= MAX_TOKENS
    folder = json.loads((out / "rewrite" / "stats.json").read_text())
    assert folder["copies_out"] == sum(r["repeats"] for r in rewritten) == stats["mixes"]["mix"]["copies_out"]
    assert folder["copies_in"] == sum(r["repeats"] for r in mix.values())
    assert folder["tokens_out"] == sum(r["n_tokens"] * r["repeats"] for r in rewritten)
    shares = folder["expected_behavior_share"]
    assert list(shares) == list(BEHAVIORS)
    for b, share in shares.items():  # token-weighted over the rewritten documents, before and after
        mass = [(mix[r["id"]]["n_tokens"] * r["repeats"], r["n_tokens"] * r["repeats"]) for r in rewritten]
        before = sum(m * mix[r["id"]][f"p_{b}"] for (m, _), r in zip(mass, rewritten)) / sum(m for m, _ in mass)
        after = sum(m * r[f"p_{b}"] for (_, m), r in zip(mass, rewritten)) / sum(m for _, m in mass)
        assert share["original"] == pytest.approx(before, rel=1e-6)
        assert share["rewritten"] == pytest.approx(after, rel=1e-6)

    card = (out / "rewrite" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["configs"][0]["data_files"][0]["path"] == "data/*.parquet" and meta["size_categories"] == ["n<1K"]
    assert "| behavior | original | rewritten | ratio |" in card and f"| {BEHAVIORS[0]} | " in card
    assert "Question: {question}\n\nThought: {thought}\n\nAnswer: {answer}" in card

    audit = run_curate("audit", out)
    assert audit.returncode == 0 and "rewrite OK" in audit.stdout, audit.stdout


@pytest.mark.slow
def test_rerun_skips_and_export_materializes_the_copies_of_the_rewrites(job_run):
    out, again = job_run["out"], job_run["again"]
    assert again.returncode == 0 and "skipped rewrite:" in again.stdout, again.stdout
    assert "nothing (all stages current)" in again.stdout and job_run["requests_again"] == []

    rows = [r for r in read_dir(out / "rewrite" / "data") if r["error"] is None]
    exported = read_dir(out / "export" / "rewrite" / "parquet" / "data")
    assert Counter(r["text"] for r in exported) == Counter({r["text"]: r["repeats"] for r in rows})
    assert Counter(r["id"] for r in exported) == Counter({r["id"]: r["repeats"] for r in rows})
    lines = [json.loads(line) for f in sorted((out / "export" / "rewrite" / "jsonl" / "data").glob("*.jsonl"))
             for line in f.read_text().splitlines()]
    assert [r["text"] for r in lines] == [r["text"] for r in exported]
    export_stats = json.loads((out / "logs" / "export" / "stats.json").read_text())
    assert export_stats["mixes"]["rewrite"]["copies"] == sum(r["repeats"] for r in rows)


@pytest.mark.slow
def test_slurm_plan_runs_rewrite_in_its_own_task_after_the_mix(job_run):
    """A changed rewrite setting: only rewrite (its own Slurm task, the `rewrite` resources) and what follows
    run again; the classifier, scores and mix are current."""
    from curate.cluster import plan
    from curate.config import load_job
    from curate.stages import Context

    job = load_job(job_run["job"])
    assert plan(Context.for_job(job)) == {}
    job.rewrite.max_tokens = 96
    tasks = plan(Context.for_job(job))
    assert list(tasks) == ["rewrite", "finish", "export"] and tasks["rewrite"] == ["rewrite"], tasks


def _copy_mix(out: Path, to: Path) -> Path:
    """A new output folder with the job's mix and classifier (what `curate rewrite` reads)."""
    for folder in ("mix", "classifier"):
        shutil.copytree(out / folder, to / folder)
    return to


@pytest.mark.slow
def test_killed_server_run_resumes_without_asking_a_finished_document_again(job_run, tmp_path):
    require_llama_cpp()
    out = _copy_mix(job_run["out"], tmp_path / "out")
    server = LlamaServer(tmp_path / "server.log").start()
    proxy = RecordingProxy(server.url).start()
    command = [sys.executable, "-m", "curate", "rewrite", "--out", str(out), "--endpoint-url", proxy.url,
               "--records-per-chunk", "2", "--retries", "1", "--max-tokens", "48", "--max-error-rate", "1", *SMALL]
    try:
        returncode, stderr, answered_before = kill_server_mid_run(command, server, proxy, REPO)
        assert returncode == 1 and "error: rewriting: stopped after" in stderr, stderr[-2000:]
        assert "run the same command again to resume" in stderr and not (out / "rewrite").exists()

        server = LlamaServer(tmp_path / "server.log").start()
        proxy = RecordingProxy(server.url, port=proxy.port, records=proxy.records).start()
        n_before = len(proxy.records)
        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
    finally:
        server.stop()
        proxy.stop()
    answered_once_each(proxy, 6, answered_before, n_before)
    assert pq.read_table(out / "rewrite" / "data").num_rows == 6
    stats = json.loads((out / STATS).read_text())
    assert stats["documents"] == 6 and stats["this_run"]["documents"] == 6 - len(answered_before)
    assert run_curate("audit", out).returncode == 0


@pytest.mark.slow
def test_answers_cut_short_are_kept_raw_as_parse_failures(job_run, llama_server, tmp_path):
    out = _copy_mix(job_run["out"], tmp_path / "out")
    result = run_curate("rewrite", "--out", out, "--endpoint-url", llama_server.url, "--max-tokens", "4",
                        "--max-error-rate", "0", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]  # parse failures are not request failures
    assert "6 documents, 0 rewritten, parse failures 6 (6 cut short by max_tokens)" in result.stdout, result.stdout
    rows = read_dir(out / "rewrite" / "data")
    assert len(rows) == 6
    for row in rows:
        assert row["raw_response"] and row["repeats"] == 0 and row["text"] is None and row["question"] is None
        assert row["error"].startswith("unparseable answer") and row["error"].endswith("(cut short at max_tokens 4)")
    stats = json.loads((out / STATS).read_text())
    assert stats["parse_failures"] == 6 and stats["parse_rate"] == 0 and stats["completion_tokens_per_document"] == 4
    folder = json.loads((out / "rewrite" / "stats.json").read_text())
    assert folder["copies_out"] == 0 and all(s["rewritten"] is None for s in folder["expected_behavior_share"].values())
    assert "n/a" in (out / "rewrite" / "README.md").read_text()
    assert run_curate("audit", out).returncode == 0


@pytest.mark.slow
def test_dry_run_prints_the_vllm_command_and_a_rewrite_request_and_starts_nothing(job_run, tmp_path):
    from curate.prompts import REWRITE_INSTRUCTION, rewrite_schema

    out = _copy_mix(job_run["out"], tmp_path / "out")
    result = run_curate("rewrite", "--out", out, "--server-type", "vllm", "--model", "Qwen/Qwen2.5-32B-Instruct",
                        "--tp", "2", "--dry-run", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert next(line for line in lines if line.startswith("vllm serve ")).startswith(
        "vllm serve Qwen/Qwen2.5-32B-Instruct --port PORT --max-model-len 8192 ")
    body = json.loads(lines[-1])
    first = read_dir(out / "mix" / "data")[0]
    assert body["messages"] == [{"role": "system", "content": REWRITE_INSTRUCTION},
                                {"role": "user", "content": first["text"]}]
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "rewrite",
                                                                              "schema": rewrite_schema()}}
    assert body["max_tokens"] == 2048 and body["temperature"] == 0.0 and body["top_k"] == -1
    assert not (out / "logs").exists() and not (out / "rewrite").exists()


@pytest.mark.slow
def test_a_missing_mix_or_classifier_is_one_line(job_run, tmp_path):
    out = _copy_mix(job_run["out"], tmp_path / "out")
    args = ["rewrite", "--out", out, "--endpoint-url", "http://127.0.0.1:1", "--model", "m"]
    missing_mix = run_curate(*args, "--mixes", "mix,control")
    assert missing_mix.returncode == 2
    assert missing_mix.stderr.strip() == f"error: {out / 'control'}: not a finished mix (needs stats.json and " \
                                         "data/*.parquet): make the mix first"
    shutil.rmtree(out / "classifier")
    no_model = run_curate(*args)
    assert no_model.returncode == 2 and no_model.stderr.startswith(f"error: {out / 'classifier' / 'model.bin'}: no "
                                                                   "classifier to score the rewrites with")


def test_parse_rewrite_is_tolerant_and_never_fills_a_missing_part():
    from curate.prompts import parse_rewrite

    # LaTeX left unescaped in JSON (\\frac read back as form feed + "rac"), a raw newline in a string, a list of
    # steps, a number as the answer, code fences and prose around the object
    fenced = 'Sure:\n```json\n{"question": " What is \\frac12 +\n1/2? ", "thought": ["\\frac12 twice", "is 1"], ' \
             '"answer": 1}\n```'
    parsed = parse_rewrite(fenced)
    assert parsed.error is None
    assert parsed.fields == {"question": "What is \\frac12 +\n1/2?", "thought": "\\frac12 twice\nis 1", "answer": "1"}
    escaped = parse_rewrite('{"question": "q", "thought": "a\\nb", "answer": "\\beta"}').fields
    assert escaped["thought"] == "a\nb" and escaped["answer"] == "\\beta"  # a JSON newline stays one
    for text, missing in [('{"question": "q", "thought": "t"}', "answer"),
                          ('{"question": "q", "thought": "  ", "answer": "a"}', "thought"),
                          ('{"question": true, "thought": "t", "answer": "a"}', "question")]:
        parsed = parse_rewrite(text)
        assert parsed.error == f"unparseable answer: no {missing}" and set(parsed.fields.values()) == {None}
    for text in (None, "", '{"question": "q", "thought": "cut sh', '{"counts": 1}'):
        parsed = parse_rewrite(text)
        assert parsed.error.startswith("unparseable answer: no JSON object") and set(parsed.fields.values()) == {None}


def test_rewrite_settings_share_the_llm_fields_and_are_validated(tmp_path):
    from curate.config import JobError, LabelConfig, LLMConfig, RewriteConfig, load_job

    assert set(LLMConfig.model_fields) < set(LabelConfig.model_fields) & set(RewriteConfig.model_fields)
    assert LabelConfig(model="m", endpoint_url="http://h:1").max_tokens == 512
    rewrite = RewriteConfig(model="m", endpoint_url="http://h:1")
    assert rewrite.max_tokens == 2048 and rewrite.mixes == ["mix"]
    with pytest.raises(ValueError, match="needs endpoint_url"):
        RewriteConfig(model="m")
    with pytest.raises(ValueError, match="mixes lists a value twice"):
        RewriteConfig(model="m", endpoint_url="http://h:1", mixes=["mix", "mix"])
    base = {"name": "t", "output_dir": str(tmp_path / "out"), "input": {"paths": [str(tmp_path)]},
            "rewrite": {"model": "m", "endpoint_url": "http://h:1", "mixes": ["mix", "control"]}}
    with pytest.raises(JobError, match=r"rewrite.mixes names \['control'\], which the job does not make"):
        load_job(write_job(tmp_path / "job.yaml", **base))
    assert load_job(write_job(tmp_path / "job.yaml", **base, mix={"control": True})).rewrite.mixes == ["mix", "control"]
    local, qwen = (load_job(REPO / "jobs" / name) for name in ("rewrite-local.yaml", "rewrite-qwen32b.yaml"))
    assert local.rewrite.endpoint_url and local.export.mixes == ["rewrite"]
    assert qwen.rewrite.tp == 2 and qwen.rewrite.structured_output == "json_schema" and qwen.label is not None
    assert qwen.output_dir == load_job(REPO / "jobs" / "label-qwen32b.yaml").output_dir  # runs after label-qwen32b


@pytest.mark.slow
def test_rewrite_runs_as_one_slurm_task_with_the_rewrite_resources(slurm_cluster, job_run, llama_server, tmp_path):
    """`curate rewrite --executor slurm --job J`: one Slurm task, with J's `slurm.stages.rewrite` resources
    over its defaults, rewrites the output folder's mix; `curate status` follows it."""
    from tests.slurm_cluster import wait_for_idle_queue

    out = _copy_mix(job_run["out"], tmp_path / "out")
    site = write_job(tmp_path / "site.yaml", name="site", output_dir=str(tmp_path / "unused"),
                     input={"paths": [str(tmp_path)]},
                     slurm={"time": "00:20:00", "stages": {"rewrite": {"time": "00:07:00"}}})
    result = run_curate("rewrite", "--out", out, "--executor", "slurm", "--job", site, "--endpoint-url",
                        llama_server.url, "--max-tokens", "32", "--max-error-rate", "1", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("submitted ")] == ["rewrite:"]
    deadline = time.monotonic() + 400
    while "running 0  pending 0" not in (status := run_curate("status", out)).stdout:
        assert time.monotonic() < deadline, status.stdout
        time.sleep(2)
    assert status.returncode == 0 and "done 1/1" in status.stdout, status.stdout
    assert "#SBATCH --time=00:07:00" in (out / "logs" / "slurm" / "rewrite" / "launch_script.slurm").read_text()
    assert pq.read_table(out / "rewrite" / "data").num_rows == 6
    assert json.loads((out / STATS).read_text())["documents"] == 6
    wait_for_idle_queue()


def test_materialized_and_overlapping_mixes_give_each_document_once_with_its_copies(tmp_path):
    """A mix that wrote each copy as a row is read as its distinct documents with their copies; a document in
    two mixes is asked about once."""
    import pyarrow as pa

    from curate.rewrite import selected_documents, write_documents
    from curate.schema import MIX_SCHEMA

    def mix_folder(name: str, ids: list[str], materialized: bool) -> Path:
        rows = [{"text": f"text of {i}", "id": i, "url": i, "p_verification": 0.5, "p_backtracking": 0.5,
                 "p_subgoal_setting": 0.5, "p_backward_chaining": 0.5, "behavior_score": 0.5, "n_tokens": 3,
                 "weight": 1.0, "repeats": 1 if materialized else ids.count(i)} for i in ids]
        folder = tmp_path / name
        (folder / "data").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=MIX_SCHEMA), folder / "data" / "part-00000.parquet")
        (folder / "stats.json").write_text(json.dumps({"materialized": materialized}))
        return folder

    shuffled = mix_folder("mix", ["b", "a", "b", "c", "b", "a"], materialized=True)
    selected = selected_documents(shuffled)
    assert selected.column("id").to_pylist() == ["b", "a", "c"]
    assert selected.column("repeats").to_pylist() == [3, 2, 1] and "text" not in selected.column_names
    other = mix_folder("control", ["d", "a"], materialized=False)
    assert write_documents({"mix": shuffled, "control": other}, tmp_path / "documents.parquet") == 4
    documents = pq.read_table(tmp_path / "documents.parquet")
    assert documents.column("id").to_pylist() == ["b", "a", "c", "d"]
    assert documents.column_names == ["id", "url", "text"]
