"""`curate label`: behavior counts from an LLM, through datatrove's inference pipeline.

reader (the sample) -> InferenceRunner(LabelRollout) -> JSONL results, then one labels Parquet
file (schema.LABELS_SCHEMA) and a stats JSON. The server is either started by datatrove per task
(`server_type: vllm`, `vllm serve MODEL`) or any OpenAI-compatible server (`endpoint`: vLLM,
SGLang, llama.cpp). Datatrove's checkpoints (chunk files + request cache) make a killed run resume
without asking a finished document again.

Failure policy: an answer that does not parse is kept with null counts, its error and the raw
text. A request answered with an error (HTTP 400, or a 5xx that outlasts the retries) is written
with its error. A server that stops answering (connection refused, timeouts after the retries, a
dead `vllm serve`) stops the run instead: those documents are asked again when it is re-run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import shutil
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.pipeline.inference.types import InferenceError, ServerError

from curate.config import LabelConfig
from curate.io import read_json, write_json, write_parquet, write_text
from curate.progress import Progress
from curate.prompts import build_requests, parse_count_tag, parse_counts, prompt_version
from curate.schema import BEHAVIORS, ERROR, ID, LABELER, LABELS_SCHEMA, PROMPT_VERSION, RAW_RESPONSE, TEXT, URL

log = logging.getLogger("curate")

LABELS_FILE, STATS_FILE, WORK_DIR = "labels.parquet", "label_stats.json", "work"
RESULTS_KEY = "label"
UNPARSEABLE = "unparseable answer"
REFUSALS_TO_STOP = 3


class ServerGone(ServerError):
    """The labeling server stopped answering: stops the task (datatrove re-raises ServerError)."""


class LabelingStopped(RuntimeError):
    """A labeling run that stopped before the end; its checkpoints stay and a re-run resumes it."""


async def _accepts_connections(url: str) -> bool:
    """Whether the host:port of `url` accepts a TCP connection (within 5 s)."""
    parsed = urlparse(url)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)), 5)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


def cut_to_tokens(text: str, tokenizer, max_tokens: int) -> str:
    """`text` cut to at most `max_tokens` tokens, at the last line break inside the budget (at the
    token boundary when the first line alone is longer)."""
    encoding = tokenizer.encode(text, add_special_tokens=False)
    if len(encoding.ids) <= max_tokens:
        return text
    end = encoding.offsets[max_tokens - 1][1]
    line_end = text.rfind("\n", 0, end + 1)
    return text[:line_end] if line_end > 0 else text[:end]


def resolved_structured_output(cfg: LabelConfig) -> str:
    """`auto` resolves to OpenAI's json_schema for vLLM and llama.cpp's json_object for endpoints;
    the paper layout is unconstrained (its answers are `<count>N</count>` tags)."""
    if cfg.prompt == "paper":
        return "none"
    if cfg.structured_output == "auto":
        return "json_schema" if cfg.server_type == "vllm" else "json_object"
    return cfg.structured_output


class LabelRollout:
    """The rollout function of datatrove's InferenceRunner for one document: cut it, send the
    layout's requests (retrying 5xx answers and timeouts with exponential backoff), parse the answers."""

    def __init__(self, cfg: LabelConfig, run_id: str, total: int | None = None, backoff_s: float = 1.0,
                 health_check_s: float = 5.0):
        self.layout, self.structured_output = cfg.prompt, resolved_structured_output(cfg)
        self.max_doc_tokens, self.tokenizer_name = cfg.max_doc_tokens, cfg.tokenizer
        self.request_timeout, self.retries, self.backoff_s = cfg.request_timeout, cfg.retries, backoff_s
        self.run_id, self.total = run_id, total
        self.endpoint = cfg.endpoint_url if cfg.server_type == "endpoint" else None
        self.health_check_s = health_check_s
        self._tokenizer = self._progress = None

    def prompt_text(self, text: str) -> str:
        from curate.tokens import load_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return cut_to_tokens(text, self._tokenizer, self.max_doc_tokens)

    async def _request(self, generate, payload: dict):
        """`generate(payload)` with a deadline; while it waits, an endpoint that refuses connections
        `REFUSALS_TO_STOP` checks in a row stops the run (datatrove alone would retry for minutes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        request = asyncio.ensure_future(generate(dict(payload)))
        refusals = 0
        try:
            while True:
                done, _ = await asyncio.wait({request}, timeout=min(self.health_check_s, self.request_timeout))
                if done:
                    return request.result()
                if loop.time() >= deadline:
                    raise asyncio.TimeoutError
                refusals = 0 if self.endpoint is None or await _accepts_connections(self.endpoint) else refusals + 1
                if refusals >= REFUSALS_TO_STOP:
                    raise ServerGone(f"{self.endpoint} refuses connections")
        finally:
            if not request.done():
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)

    async def _ask(self, generate, payload: dict) -> tuple[str | None, dict, str | None]:
        """One request: (answer text, usage, error). Raises ServerGone when the server is gone."""
        last_error, timed_out = "", False
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                result = await self._request(generate, payload)
                return result.text, dict(result.usage or {}), None
            except asyncio.TimeoutError:
                last_error, timed_out = f"no answer within {self.request_timeout:g}s", True
            except ServerError as e:
                if "InternalServerError" not in str(e):  # not an HTTP 500 answer: the server is gone
                    raise ServerGone(str(e)) from None
                last_error, timed_out = str(e)[:500], False
            except InferenceError as e:
                message = str(e.error)
                if "BadRequestError" in message:
                    return None, {}, message[:500]
                if "after" in message and "attempts" in message:  # datatrove's connection retries ran out
                    raise ServerGone(message) from None
                last_error, timed_out = message[:500], False
        if timed_out:
            raise ServerGone(f"{last_error} ({self.retries + 1} attempts)")
        return None, {}, f"request failed after {self.retries + 1} attempts: {last_error}"

    async def __call__(self, document, generate) -> dict:
        requests = build_requests(self.prompt_text(document.text), self.layout, self.structured_output)
        answers = await asyncio.gather(*(self._ask(generate, payload) for _, payload in requests))
        counts: dict[str, int | None] = dict.fromkeys(BEHAVIORS)
        errors = []
        if self.layout == "counts":
            text, _usage, error = answers[0]
            raw = text
            if error is None:
                counts, error = parse_counts(text)
            errors.append(error)
        else:
            raw = json.dumps({b: text for (b, _), (text, _, _) in zip(requests, answers)}, ensure_ascii=False)
            for (behavior, _), (text, _usage, error) in zip(requests, answers):
                if error is None:
                    counts[behavior], error = parse_count_tag(text)
                errors.append(f"{behavior}: {error}" if error else None)
        if self._progress is None:
            self._progress = Progress("label", self.total, every_s=30)
        self._progress.update()
        return {
            "counts": counts,
            "raw_response": raw,
            "error": "; ".join(e for e in errors if e) or None,
            "prompt_tokens": sum(u.get("prompt_tokens", 0) for _, u, _ in answers),
            "completion_tokens": sum(u.get("completion_tokens", 0) for _, u, _ in answers),
            "requests": len(requests),
            "run_id": self.run_id,
        }


def label_fingerprint(sample_path: str | Path, cfg: LabelConfig) -> str:
    """What the labels depend on: the sample's bytes, the model, the prompt and the generation settings."""
    from curate.io import file_sha256

    settings = cfg.model_dump(include={"model", "prompt", "max_doc_tokens", "tokenizer", "max_tokens", "temperature",
                                       "tasks", "records_per_chunk"})
    settings.update(prompt_version=prompt_version(cfg.prompt), structured_output=resolved_structured_output(cfg))
    return hashlib.sha256(json.dumps([file_sha256(sample_path), settings], sort_keys=True).encode()).hexdigest()


def _claim_work_dir(work: Path, fingerprint: str) -> None:
    """Keep the checkpoints of an interrupted run with the same fingerprint; start afresh otherwise."""
    marker = work / "fingerprint"
    if marker.exists() and marker.read_text() == fingerprint:
        # datatrove rewrites checkpoints/last_chunk/RANK.txt in place: a kill at that instant leaves it
        # empty and every resume would fail reading it. Without it the rank's chunks are asked again.
        for chunk_marker in (work / "checkpoints" / "last_chunk").glob("*.txt"):
            if not chunk_marker.read_text().strip().isdecimal():
                log.warning("label: %s is unreadable (killed while written); its rank starts over", chunk_marker)
                chunk_marker.unlink()
        return
    if work.exists():
        log.warning("label: %s holds work for other settings; starting afresh", work)
        shutil.rmtree(work)
    write_text(fingerprint, marker)


def _shard_sample(sample_path: str | Path, work: Path, tasks: int) -> list[str]:
    """Split the sample into one Parquet file per task (rank r reads shard r)."""
    table = pq.read_table(sample_path)
    shards = []
    for rank in range(tasks):
        path = work / "input" / f"{rank:05d}.parquet"
        if not path.exists():
            write_parquet(table.take(np.arange(rank, table.num_rows, tasks)), path)
        shards.append(str(path))
    return shards


def build_pipeline(shards: list[str], work: Path, cfg: LabelConfig, rollout: LabelRollout) -> list:
    """The datatrove pipeline of the label stage: reader -> InferenceRunner (checkpointed) -> JSONL."""
    from datatrove.pipeline.inference.run_inference import InferenceConfig
    from datatrove.pipeline.writers import JsonlWriter

    from curate.inference import InferenceRunner
    from curate.score import OpenWebMathReader

    ready_delay_s = 2.0
    inference = InferenceConfig(
        server_type=cfg.server_type,
        model_name_or_path=cfg.model,
        endpoint_url=cfg.endpoint_url,
        model_max_context=cfg.max_model_len,
        tp=cfg.tp,
        default_generation_params={"max_tokens": cfg.max_tokens, "temperature": cfg.temperature},
        max_concurrent_generations=cfg.concurrency,
        request_timeout=cfg.request_timeout,
        metric_interval=300,
        server_log_folder=str(work / "server_logs"),
        server_ready_delay_sec=ready_delay_s,
        server_ready_max_attempts=max(1, math.ceil(cfg.server_ready_timeout / ready_delay_s)),
        server_start_timeout_sec=cfg.server_ready_timeout,
    )
    return [
        OpenWebMathReader(shards, errors_folder=str(work / "errors")),
        InferenceRunner(
            rollout_fn=rollout,
            config=inference,
            output_writer=JsonlWriter(str(work / "results"), output_filename="${rank}_chunk_${chunk_index}.jsonl",
                                      compression=None),
            checkpoints_local_dir=str(work / "checkpoints"),
            records_per_chunk=cfg.records_per_chunk,
            metadata_key=RESULTS_KEY,
        ),
    ]


def _results(work: Path) -> list[dict]:
    rows = []
    for path in sorted((work / "results").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _labels_table(results: list[dict], cfg: LabelConfig) -> pa.Table:
    version = prompt_version(cfg.prompt)
    rows = []
    for doc in sorted(results, key=lambda d: d["id"]):
        answer = doc["metadata"][RESULTS_KEY][0]
        rows.append({ID: doc["id"], URL: doc["metadata"].get(URL), TEXT: doc["text"], **answer["counts"],
                     LABELER: cfg.model, PROMPT_VERSION: version, RAW_RESPONSE: answer["raw_response"],
                     ERROR: answer["error"]})
    return pa.Table.from_pylist(rows, schema=LABELS_SCHEMA)


def run_stats(results: list[dict], run_id: str, seconds: float) -> dict:
    """Documents labeled, parse-failure rate, tokens per document (from the server's `usage`), and
    the throughput of this run (requests and documents it sent, over its wall time)."""
    answers = [doc["metadata"][RESULTS_KEY][0] for doc in results]
    n = len(answers)
    parse_failures = sum(1 for a in answers if a["error"] and UNPARSEABLE in a["error"])
    request_errors = sum(1 for a in answers if a["error"] and UNPARSEABLE not in a["error"])
    this_run = [a for a in answers if a["run_id"] == run_id]
    requests = sum(a["requests"] for a in this_run)
    return {
        "documents": n,
        "documents_labeled": sum(1 for a in answers if not a["error"]),
        "parse_failures": parse_failures,
        "parse_failure_rate": parse_failures / n if n else None,
        "request_errors": request_errors,
        "prompt_tokens_per_document": sum(a["prompt_tokens"] for a in answers) / n if n else None,
        "completion_tokens_per_document": sum(a["completion_tokens"] for a in answers) / n if n else None,
        "requests_per_document": sum(a["requests"] for a in answers) / n if n else None,
        "this_run": {
            "seconds": round(seconds, 3),
            "documents": len(this_run),
            "requests": requests,
            "requests_per_second": requests / seconds if seconds > 0 else None,
            "documents_per_hour": 3600 * len(this_run) / seconds if seconds > 0 else None,
        },
    }


def label(sample_path: str | Path, out_dir: str | Path, cfg: LabelConfig, fingerprint: str | None = None) -> dict:
    """Label the documents of a sample file; write `labels.parquet` and `label_stats.json` into
    `out_dir` and return the stats. Re-running an interrupted run resumes it; re-running a finished
    one with the same settings does nothing."""
    from datatrove.executor import LocalPipelineExecutor

    out_dir = Path(out_dir)
    fingerprint = fingerprint or label_fingerprint(sample_path, cfg)
    stats_path = out_dir / STATS_FILE
    if (out_dir / LABELS_FILE).exists() and stats_path.exists() and read_json(stats_path).get("fingerprint") == fingerprint:
        return {**read_json(stats_path), "skipped": True}
    work = out_dir / WORK_DIR
    _claim_work_dir(work, fingerprint)
    shards = _shard_sample(sample_path, work, cfg.tasks)
    run_id = uuid.uuid4().hex
    rollout = LabelRollout(cfg, run_id, total=pq.ParquetFile(sample_path).metadata.num_rows)
    start = time.monotonic()
    executor = LocalPipelineExecutor(build_pipeline(shards, work, cfg, rollout), tasks=cfg.tasks, workers=1,
                                     logging_dir=str(work / "logs"))
    try:
        executor.run()
    except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - a stopped server or a failed task
        # (datatrove cancels its request tasks when the endpoint is down from the start); the checkpoints stay
        done = documents_done(out_dir)
        reason = (str(e).splitlines() or [type(e).__name__])[0][:300]
        raise LabelingStopped(f"labeling stopped after {done} documents: {reason}; "
                                f"run the same command again to resume") from e
    seconds = time.monotonic() - start
    results = _results(work)
    write_parquet(_labels_table(results, cfg), out_dir / LABELS_FILE)
    stats = {"fingerprint": fingerprint, "labeler": cfg.model, "prompt": cfg.prompt,
             "prompt_version": prompt_version(cfg.prompt), "structured_output": resolved_structured_output(cfg),
             **run_stats(results, run_id, seconds), "skipped": False}
    write_json(stats, stats_path)
    return stats


def documents_done(out_dir: str | Path) -> int:
    """Documents whose answers a labeling run into `out_dir` has written (a re-run does not ask them again)."""
    return len(_results(Path(out_dir) / WORK_DIR))


def eval_labels(labels_path: str | Path, reference_path: str | Path) -> dict:
    """Agreement of a labels file with a reference one, per behavior, over the documents in both with
    a count in both: Spearman correlation of counts and F1 of `count > 0` (reference as truth)."""
    from scipy.stats import spearmanr

    from curate.labels import read_counts
    from curate.metrics import binary_metrics

    labels, reference = read_counts(labels_path), read_counts(reference_path)
    common = sorted(set(labels) & set(reference))
    result = {"documents_in_both": len(common), "behaviors": {}}
    for b in BEHAVIORS:
        pairs = [(labels[i][b], reference[i][b]) for i in common if labels[i][b] is not None and reference[i][b] is not None]
        x = np.array([p[0] for p in pairs], dtype=float)
        y = np.array([p[1] for p in pairs], dtype=float)
        rho = float(spearmanr(x, y).statistic) if len(pairs) > 1 and x.std() > 0 and y.std() > 0 else None
        agreement = binary_metrics(y > 0, x, 0.5)  # a count of 1 or more against the reference's
        result["behaviors"][b] = {"documents": len(pairs), "spearman": rho, **agreement,
                                  "positives_labels": int(np.sum(x > 0)), "positives_reference": int(np.sum(y > 0))}
    return result
