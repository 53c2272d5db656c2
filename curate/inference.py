"""LLM rollouts over a Parquet file of documents, through datatrove's inference pipeline.

What every stage that asks an LLM about documents shares (`label`, `rewrite`):
- the server: `vllm serve` started by datatrove inside the task (`server_type: vllm`) or any
  OpenAI-compatible server (`endpoint`; vLLM, SGLang, llama.cpp), its URL taken with or without `/v1`;
- requests that wait for the server to be ready before their deadline starts, without being able to
  cancel anything shared; a server that never gets ready, or stops answering, stops the run in one
  line naming the URL and what happened (a re-run resumes from the checkpoints);
- a retry policy per request (5xx, reset connections, timeouts: exponential backoff; 4xx: no retry);
- failure accounting: a run whose first documents all fail stops at once, and a run with more failed
  documents than `max_error_rate` is refused; either way its failed documents are asked again on a re-run;
- checkpoints (datatrove's chunk files and request cache) so that a killed run resumes;
- run statistics, and a dry run that prints the server command and one request without starting anything.

A stage supplies a `Rollout` subclass: the requests for a document and what to keep of the answers.
The settings object (`cfg`) is a `curate.config.LLMConfig` (the server and run fields).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shlex
import shutil
import socket
import tempfile
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import numpy as np
import pyarrow.parquet as pq
from datatrove.pipeline.inference.servers import EndpointServer, InferenceServer, VLLMServer
from datatrove.pipeline.inference.types import InferenceError, ServerError

from curate import procs
from curate.errors import RunStopped
from curate.io import write_parquet, write_text
from curate.layout import claim
from curate.progress import Progress

log = logging.getLogger("curate")

RESULTS_KEY = "rollout"
ACCEPTED_FILE = "accepted.jsonl"  # documents answered in earlier passes of a run that was refused for its failures
LOCALHOST = ("localhost", "127.0.0.1", "::1")  # datatrove posts raw HTTP to these, through the OpenAI client elsewhere
DEFINITIVE_PROBES = 3  # a refused connection / unknown host / 4xx this many times in a row: the endpoint is not there
SERVER_READY_DEFAULT_S = {"vllm": 1800.0, "endpoint": 60.0}


class ServerGone(ServerError):
    """The server cannot be reached, never got ready or stopped answering: stops the run (datatrove
    re-raises ServerError from a request); a re-run resumes from the checkpoints."""

    def __init__(self, message: str):
        Exception.__init__(self, message)
        self.error = message


class RunFailing(ServerError):
    """The first documents of a run all failed: stops the run at once."""

    def __init__(self, message: str):
        Exception.__init__(self, message)
        self.error = message


class RequestFailed(InferenceError):
    """One request that failed: `retry` when asking again may help (5xx, reset connection, timeout),
    not for a 4xx answer. Its message names no `BadRequestError`, so datatrove does not replay it from its
    request cache: a re-run asks again."""

    def __init__(self, message: str, retry: bool, timed_out: bool = False):
        Exception.__init__(self, message)
        self.document, self.payload, self.error = None, None, message
        self.retry, self.timed_out = retry, timed_out


class Answer(NamedTuple):
    text: str | None
    usage: dict
    error: str | None


# ---------------------------------------------------------------------------------------------
# Settings derived from the stage's config


def endpoint_base(url: str) -> str:
    """The server's base URL without a trailing `/v1` or `/`: requests go to `{base}/v1/chat/completions`,
    readiness polls `{base}/v1/models`, whether the user wrote the URL with `/v1` or without."""
    base = url.strip().rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def engine(cfg) -> str:
    """The server software, which names sampling parameters and takes structured output its own way:
    `auto` is vllm for `server_type: vllm`, llama.cpp for endpoints."""
    if cfg.engine != "auto":
        return cfg.engine
    return "vllm" if cfg.server_type == "vllm" else "llama.cpp"


def server_ready_timeout(cfg) -> float:
    return cfg.server_ready_timeout or SERVER_READY_DEFAULT_S[cfg.server_type]


def sampling_params(cfg) -> dict:
    """Every sampling parameter sent explicitly with each request, so that neither vLLM (which applies the
    model's generation_config by default: Qwen2.5 sets repetition_penalty 1.05, top_k 20) nor llama.cpp
    (repeat_penalty 1.1, top_k 40, min_p 0.05) changes the decoding behind the user's back."""
    params = {"max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p, "min_p": 0.0,
              "presence_penalty": 0.0, "frequency_penalty": 0.0}
    if engine(cfg) == "vllm":  # vLLM's (and SGLang's) names; top_k -1 = all tokens
        params.update(top_k=-1, repetition_penalty=cfg.repetition_penalty)
    else:  # llama.cpp's server: top_k 0 = all tokens (it rejects -1)
        params.update(top_k=0, repeat_penalty=cfg.repetition_penalty)
    return params


def server_args(cfg) -> dict:
    """Extra `vllm serve` arguments (datatrove's model_kwargs: `{k: v}` -> `--k=v`, True -> `--k`, False -> `--no-k`).
    vLLM's grammar lets a model write free whitespace inside JSON (a model can loop on newlines up to
    max_tokens); `disable_any_whitespace` forbids it. It is a server setting (vLLM ignores the per-request
    field with the xgrammar backend), added unless the user set the structured-outputs config themselves."""
    args = {str(k).lstrip("-"): v for k, v in cfg.server_args.items()}
    if engine(cfg) == "vllm" and not any(k.startswith(("structured-outputs-config", "guided-decoding")) for k in args):
        args["structured-outputs-config"] = json.dumps({"disable_any_whitespace": True})
    return args


def structured_output(cfg) -> str:
    """The output constraint: `auto` resolves to OpenAI's json_schema for vLLM and llama.cpp's json_object form."""
    if cfg.structured_output == "auto":
        return "json_schema" if engine(cfg) == "vllm" else "json_object"
    return cfg.structured_output


def request_settings(cfg, structured: str) -> dict:
    """What, besides the prompt, decides the answers: sampling parameters, structured output, whitespace."""
    return {"sampling": sampling_params(cfg), "structured_output": structured,
            "compact_json": compact_json_setting(cfg)}


def compact_json_setting(cfg) -> str | None:
    """How the server is told to write JSON without free whitespace (part of the prompt version)."""
    if engine(cfg) == "llama.cpp":
        return "llama.cpp grammar (at most one space between tokens)"
    return server_args(cfg).get("structured-outputs-config")


def inference_config(cfg, work: Path):
    """datatrove's InferenceConfig for a stage's settings: one readiness window of `server_ready_timeout`
    (no second start attempt), the request deadline and sampling parameters, the extra server arguments."""
    from datatrove.pipeline.inference.run_inference import InferenceConfig

    ready_s = server_ready_timeout(cfg)
    delay_s = 2.0 if cfg.server_type == "vllm" else 1.0
    return InferenceConfig(
        server_type=cfg.server_type,
        model_name_or_path=cfg.model,
        endpoint_url=endpoint_base(cfg.endpoint_url) if cfg.endpoint_url else None,
        model_max_context=cfg.max_model_len,
        tp=cfg.tp,
        default_generation_params=sampling_params(cfg),
        max_concurrent_generations=cfg.concurrency,
        request_timeout=cfg.request_timeout,
        model_kwargs=server_args(cfg) if cfg.server_type == "vllm" else None,
        metric_interval=300,
        server_log_folder=str(work / "server_logs"),
        server_ready_delay_sec=delay_s,
        server_ready_max_attempts=max(1, math.ceil(ready_s / delay_s)),
        server_start_timeout_sec=ready_s,
        server_start_max_retries=0,
    )


def vllm_command(config, port: int | str) -> list[str]:
    """The `vllm serve` command line datatrove's VLLMServer builds (the same flags, in the same order):
    what the vllm server type runs, and what `--dry-run` prints."""
    cmd = ["vllm", "serve", config.model_name_or_path, "--port", str(port), "--max-model-len",
           str(config.model_max_context), "--trust-remote-code", "--disable-uvicorn-access-log"]
    kwargs = dict(config.model_kwargs or {})
    for flag, size in (("tensor-parallel-size", config.tp), ("data-parallel-size", config.dp),
                       ("pipeline-parallel-size", config.pp)):
        if size > 1:
            kwargs.setdefault(flag, size)
    for k, v in kwargs.items():
        cmd.append(f"--{k}" if v is True else f"--no-{k}" if v is False else f"--{k}={v}")
    return cmd


def compile_lock_dir() -> Path:
    """Where datatrove's VLLMServer takes its `fcntl.flock` compile lock: VLLM_COMPILE_LOCK_DIR when set,
    else node-local temporary space (datatrove's default, ~/.cache/vllm_compile_locks, is on a shared home
    where Lustre/NFS without flock makes every start attempt fail)."""
    if os.environ.get("VLLM_COMPILE_LOCK_DIR"):
        return Path(os.environ["VLLM_COMPILE_LOCK_DIR"])
    return Path(tempfile.gettempdir()) / f"curate-vllm-compile-locks-{os.getuid()}"


def full_payload(config, payload: dict) -> dict:
    """The request body datatrove sends for `payload` (its _send_request adds the model and default params)."""
    body = {**payload, "model": config.model_name_or_path}
    for key, value in config.default_generation_params.items():
        body.setdefault(key, value)
    return body


# ---------------------------------------------------------------------------------------------
# Servers: datatrove's, with ready-first requests and one-line diagnoses


async def accepts_connections(url: str, timeout: float = 5.0) -> str | None:
    """None when the host:port of `url` accepts a TCP connection, else what happened."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parsed.hostname, port), timeout)
    except ConnectionRefusedError:
        return "connection refused"
    except socket.gaierror as e:
        return f"unknown host ({e.strerror})"
    except asyncio.TimeoutError:
        return f"connection timed out after {timeout:g}s"
    except OSError as e:
        return e.strerror or type(e).__name__
    writer.close()
    return None


async def probe(url: str, timeout: float = 5.0) -> tuple[str | None, bool]:
    """GET `url`: (None, True) when it answers 200, else (what happened, whether it is definitive:
    refused, unknown host or a 4xx answer; a timeout or a 5xx may pass)."""
    import httpx

    problem = await accepts_connections(url, timeout)
    if problem is not None:
        return problem, "timed out" not in problem
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(url, headers=_auth_headers())
    except httpx.TimeoutException:
        return f"no answer within {timeout:g}s", False
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}", False
    if response.status_code == 200:
        return None, True
    return f"HTTP {response.status_code} {response.reason_phrase}", response.status_code < 500


def _auth_headers() -> dict:
    key = os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _http_error(e: Exception) -> RequestFailed:
    """A failed request as RequestFailed: 4xx answers are final, the rest may pass."""
    status = getattr(e.__cause__, "status_code", None)  # the OpenAI client's APIStatusError
    message = str(getattr(e, "error", e))
    for prefix, code in (("Got BadRequestError from server: ", 400), ("Got InternalServerError from server: ", 500)):
        if message.startswith(prefix):  # datatrove's raw HTTP client
            status, message = code, message.removeprefix(prefix)
    if message.startswith("Error http status "):
        status = int(message.split()[-1])
    if status is not None:
        return RequestFailed(f"HTTP {status}: {message[:300]}", retry=status >= 500 or status == 429)
    return RequestFailed(message[:300], retry=True)


class _ReadyFirst:
    """For datatrove's servers: a request waits until the server is ready, shielded (a cancelled request
    never cancels the future every request waits on), then has `request_timeout` seconds. Failures come
    out as RequestFailed (the rollout retries or records them) or ServerGone (stops the run), never as
    the ConnectionError/OSError/TimeoutError that datatrove would retry on its own for minutes."""

    problem: str | None = None  # why the server is not ready, for the one-line message

    def describe(self) -> str:
        raise NotImplementedError

    async def start_server(self):
        try:
            return await super().start_server()
        except Exception as e:
            self.problem = f"{type(e).__name__}: {e}"
            raise

    async def make_request(self, payload: dict) -> dict:
        try:
            await asyncio.shield(self._server_ready)
        except Exception:  # noqa: BLE001 - datatrove sets a ServerError when the start failed or the server died
            raise ServerGone(self.describe()) from None
        try:
            return await asyncio.wait_for(self._make_request(payload=payload), self.config.request_timeout)
        except asyncio.TimeoutError:
            raise RequestFailed(f"no answer within {self.config.request_timeout:g}s", retry=True,
                                timed_out=True) from None
        except (InferenceError, ServerError) as e:  # HTTP 4xx/5xx, an answer that is not JSON
            raise _http_error(e) from None
        except (ConnectionError, OSError) as e:
            gone = await accepts_connections(self.get_base_url())
            if gone is not None:
                raise ServerGone(f"{self.get_base_url()}: {gone}") from None
            raise RequestFailed(f"{type(e).__name__}: {e}"[:300], retry=True) from None
        except (ValueError, KeyError, IndexError) as e:  # a 200 whose body is not a chat completion
            raise RequestFailed(f"answer is not a chat completion ({type(e).__name__})", retry=True) from None


class Endpoint(_ReadyFirst, EndpointServer):
    """An OpenAI-compatible server at a URL. Like datatrove: raw HTTP for http://localhost, the OpenAI client
    elsewhere; unlike it, both use `{base}/v1/...`, the client does not retry on its own, an API key is read
    from OPENAI_API_KEY when set, and readiness ends at once with a refused connection or a 4xx answer."""

    def __init__(self, config, rank: int):
        InferenceServer.__init__(self, config, rank)
        self.endpoint_url = endpoint_base(config.endpoint_url)
        parsed = urlparse(self.endpoint_url)
        self.client = None
        if not (parsed.scheme == "http" and parsed.hostname in LOCALHOST):
            from openai import AsyncOpenAI

            self.client = AsyncOpenAI(api_key=os.environ.get("OPENAI_API_KEY") or "none", max_retries=0,
                                      base_url=self.endpoint_url + "/v1", timeout=config.request_timeout)

    def describe(self) -> str:
        return self.problem or f"{self.endpoint_url}: the server is not available"

    async def _make_request(self, payload: dict) -> dict:
        if self.client is not None:  # the OpenAI client takes only OpenAI's keywords: the rest goes as extra_body
            body = {k: v for k, v in payload.items() if k not in ("model", "messages")}
            payload = {"model": payload["model"], "messages": payload["messages"], "extra_body": body}
        return await super()._make_request(payload)

    async def _wait_until_ready(self, max_attempts: int = 1, delay_sec: float = 1.0) -> None:
        url = f"{self.endpoint_url}/v1/models"
        definitive = 0
        for attempt in range(max_attempts):
            problem, final = await probe(url)
            if problem is None:
                return
            self.problem = f"{url}: {problem}"
            definitive = definitive + 1 if final else 0
            if definitive >= DEFINITIVE_PROBES:
                break
            await asyncio.sleep(delay_sec)
        else:
            self.problem += f" (still, after {max_attempts * delay_sec:g}s: server_ready_timeout)"
        raise ServerGone(self.problem)


class VLLM(_ReadyFirst, VLLMServer):
    """datatrove's `vllm serve` per task, with the command of `vllm_command` and the compile lock of
    `compile_lock_dir`; a start that fails names the reason and the server log."""

    def describe(self) -> str:
        where = f" (server log: {self._get_log_file_path()})" if self._get_log_file_path() else ""
        problem = self.problem or "it stopped"
        return f"vllm serve {self.config.model_name_or_path}: {problem}{where}"

    def _get_compile_lock(self):
        from datatrove.pipeline.inference.servers.compile_lock import CompileLockManager, compute_config_hash

        if self._compile_lock is None:
            config_hash = compute_config_hash(self.config.model_name_or_path, self.config.tp, self.config.pp,
                                              self.config.dp, self.config.model_max_context, self.config.model_kwargs)
            self._compile_lock = CompileLockManager(config_hash, lock_dir=compile_lock_dir())
        return self._compile_lock

    async def _start_vllm_task(self):
        env = {**os.environ}
        env.setdefault("USE_TF", "0")  # as datatrove: keeps transformers from importing TensorFlow
        env.setdefault("TRANSFORMERS_NO_TF", "1")
        process = await asyncio.create_subprocess_exec(*vllm_command(self.config, self._port), env=env,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        procs.keep(process.pid)  # the server ends when this process does, however it ends
        return process

    async def _wait_until_ready(self, max_attempts: int = 300, delay_sec: float = 5.0) -> None:
        try:
            await super()._wait_until_ready(max_attempts=max_attempts, delay_sec=delay_sec)
        except Exception as e:
            if "terminated unexpectedly" in str(e):
                self.problem = f"exited with code {self._server_process.returncode} before it was ready"
            else:
                self.problem = f"not ready within {max_attempts * delay_sec:g}s (server_ready_timeout)"
            raise


def runner_class():
    """datatrove's InferenceRunner with the servers above."""
    from datatrove.pipeline.inference.run_inference import InferenceRunner

    class Runner(InferenceRunner):
        def _init_server(self, rank: int):
            return {"vllm": VLLM, "endpoint": Endpoint}[self.config.server_type](self.config, rank)

        def run(self, data, rank: int = 0, world_size: int = 1) -> None:
            with self.track_time(unit="total"):  # a stop signal lets the requests and the server clean up
                procs.run_coroutine(self.run_async(data, rank))

    return Runner


# ---------------------------------------------------------------------------------------------
# Rollouts


class Rollout:
    """A stage's rollout function for datatrove's InferenceRunner. Subclasses give `requests(text)`: the
    chat payloads for one (already cut) document, and `result(text, answers)`: the stage's fields of its
    result. This class cuts the document, sends the requests (each retried per the policy), adds the
    generic fields (`request_failed`: some request got no answer, `error`: the request errors and the
    stage's own, tokens, requests, run_id), counts progress and stops a run whose first
    `stop_after_failures` documents all failed."""

    what = "rollout"

    def __init__(self, cfg, run_id: str, total: int | None = None, backoff_s: float = 1.0):
        self.max_doc_tokens, self.tokenizer_name = cfg.max_doc_tokens, cfg.tokenizer
        self.retries, self.backoff_s, self.stop_after_failures = cfg.retries, backoff_s, cfg.stop_after_failures
        self.run_id, self.total = run_id, total
        self.finished = self.failed = 0
        self._tokenizer = self._progress = None

    def requests(self, text: str) -> list[dict]:
        raise NotImplementedError

    def result(self, text: str, answers: list[Answer]) -> dict:
        """The stage's fields (`answers[i].text` is None where request i failed); `error` (str or None) says
        what went wrong with the answers that came back."""
        raise NotImplementedError

    def cut(self, text: str) -> str:
        """The document cut at a line boundary to `max_doc_tokens` tokens."""
        from curate.tokens import load_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return cut_to_tokens(text, self._tokenizer, self.max_doc_tokens)

    async def ask(self, generate, payload: dict) -> Answer:
        """One request, retried with exponential backoff while that may help. All attempts timed out: the
        server is overloaded or hung, which stops the run (ServerGone propagates) rather than fail every document."""
        error = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                result = await generate(dict(payload))
                return Answer(result.text, dict(result.usage or {}), None)
            except RequestFailed as e:
                if not e.retry:
                    return Answer(None, {}, str(e))
                error = e
            except InferenceError as e:  # datatrove's own (e.g. a rollout-side failure): may pass
                error = RequestFailed(str(e.error)[:300], retry=True)
        if error.timed_out:
            raise ServerGone(f"{error} ({self.retries + 1} attempts)")
        return Answer(None, {}, f"request failed after {self.retries + 1} attempts: {error}")

    async def __call__(self, document, generate) -> dict:
        text = self.cut(document.text)
        answers = await asyncio.gather(*(self.ask(generate, payload) for payload in self.requests(text)))
        request_errors = [a.error for a in answers if a.error]
        result = self.result(text, answers)
        result.update(
            request_failed=bool(request_errors),
            error="; ".join(filter(None, [*dict.fromkeys(request_errors), result.get("error")])) or None,
            prompt_tokens=sum(a.usage.get("prompt_tokens", 0) for a in answers),
            completion_tokens=sum(a.usage.get("completion_tokens", 0) for a in answers),
            requests=len(answers),
            run_id=self.run_id,
        )
        self._account(result)
        return result

    def _account(self, result: dict) -> None:
        if self._progress is None:
            self._progress = Progress(self.what, self.total, every_s=30)
        self._progress.update()
        self.finished += 1
        self.failed += result["request_failed"]
        if self.finished == self.failed == self.stop_after_failures:
            raise RunFailing(f"the first {self.finished} documents all failed, the last with: {result['error']}")


def cut_to_tokens(text: str, tokenizer, max_tokens: int) -> str:
    """`text` cut to at most `max_tokens` tokens, at the last line break inside the budget (at the
    token boundary when the first line alone is longer)."""
    encoding = tokenizer.encode(text, add_special_tokens=False)
    if len(encoding.ids) <= max_tokens:
        return text
    end = encoding.offsets[max_tokens - 1][1]
    line_end = text.rfind("\n", 0, end + 1)
    return text[:line_end] if line_end > 0 else text[:end]


# ---------------------------------------------------------------------------------------------
# Running a rollout over a sample file: work folder, checkpoints, passes


def claim_work_dir(work: Path, fingerprint: str) -> None:
    """Keep the checkpoints of an interrupted run with the same fingerprint; start afresh otherwise."""
    def clear():
        if work.exists():
            log.warning("%s holds work for other settings; starting afresh", work)
            shutil.rmtree(work)

    if claim(work, fingerprint, clear):
        # datatrove rewrites checkpoints/last_chunk/RANK.txt in place: a kill at that instant leaves it
        # empty and every resume would fail reading it. Without it the rank's chunks are asked again.
        for chunk_marker in (work / "checkpoints" / "last_chunk").glob("*.txt"):
            if not chunk_marker.read_text().strip().isdecimal():
                log.warning("%s is unreadable (killed while written); its rank starts over", chunk_marker)
                chunk_marker.unlink()


def _read_jsonl(paths) -> list[dict]:
    return [json.loads(line) for path in paths for line in Path(path).read_text().splitlines() if line.strip()]


def accepted_results(work: Path) -> list[dict]:
    """Documents answered in earlier passes of a run refused for its failures."""
    path = work / ACCEPTED_FILE
    return _read_jsonl([path]) if path.exists() else []


def documents_done(work: Path) -> int:
    """Documents answered so far by a run in `work` (a re-run does not ask them again)."""
    return len(accepted_results(work)) + len(pass_results(work)) if work.is_dir() else 0


def pass_results(work: Path) -> list[dict]:
    """Documents answered in the current pass (datatrove's JSONL output)."""
    return _read_jsonl(sorted((work / "results").glob("*.jsonl")))


def rollout_of(doc: dict) -> dict:
    return doc["metadata"][RESULTS_KEY][0]


def shard_sample(sample_path: str | Path, work: Path, tasks: int, skip_ids: set[str]) -> list[str]:
    """Split the sample, less `skip_ids`, into one Parquet file per task (rank r reads shard r)."""
    table = None
    shards = []
    for rank in range(tasks):
        path = work / "input" / f"{rank:05d}.parquet"
        if not path.exists():
            if table is None:
                table = pq.read_table(sample_path)
                if skip_ids:
                    keep = np.array([i not in skip_ids for i in table.column("id").to_pylist()], dtype=bool)
                    table = table.filter(keep)
            write_parquet(table.take(np.arange(rank, table.num_rows, tasks)), path)
        shards.append(str(path))
    return shards


def ask_again_for_failed(work: Path, results: list[dict]) -> int:
    """Keep the documents that did not fail (accepted.jsonl) and drop this pass (input shards, results,
    checkpoints, logs): the next run asks the failed and the unasked documents. Returns how many failed."""
    good = [r for r in results if not rollout_of(r)["request_failed"]]
    write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in good), work / ACCEPTED_FILE)
    for folder in ("input", "results", "checkpoints", "logs"):
        shutil.rmtree(work / folder, ignore_errors=True)
    return len(results) - len(good)


def build_pipeline(shards: list[str], work: Path, cfg, rollout: Rollout) -> list:
    """reader -> InferenceRunner (checkpointed, our servers) -> JSONL results."""
    from datatrove.pipeline.writers import JsonlWriter

    from curate.readers import OpenWebMathReader

    return [
        OpenWebMathReader(shards, errors_folder=str(work / "errors")),
        runner_class()(
            rollout_fn=rollout,
            config=inference_config(cfg, work),
            output_writer=JsonlWriter(str(work / "results"), output_filename="${rank}_chunk_${chunk_index}.jsonl",
                                      compression=None),
            checkpoints_local_dir=str(work / "checkpoints"),
            records_per_chunk=cfg.records_per_chunk,
            metadata_key=RESULTS_KEY,
        ),
    ]


def run_rollouts(sample_path: str | Path, work: Path, cfg, rollout: Rollout, fingerprint: str) -> list[dict]:
    """Ask about every document of the sample not answered yet in `work`; return all answered documents
    (datatrove's dicts: id, text, metadata[RESULTS_KEY][0] = the rollout's result).

    Raises RunStopped (one line) when the server is gone or never got ready (the checkpoints stay: a
    re-run resumes), or when the first documents all failed or more than `max_error_rate` of them did
    (those are asked again on a re-run; the others are kept)."""
    from datatrove.executor import LocalPipelineExecutor

    claim_work_dir(work, fingerprint)
    accepted = accepted_results(work)
    shards = shard_sample(sample_path, work, cfg.tasks, {r["id"] for r in accepted})
    executor = LocalPipelineExecutor(build_pipeline(shards, work, cfg, rollout), tasks=cfg.tasks, workers=1,
                                     logging_dir=str(work / "logs"))
    try:
        executor.run()
    except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - a stopped server or a failed task
        results = accepted + pass_results(work)
        reason = (str(e).splitlines() or [type(e).__name__])[0][:400]
        if isinstance(e, RunFailing):
            ask_again_for_failed(work, results)
            raise RunStopped(f"{reason}; stopped (nothing of it is recorded as done); run the same command again "
                             f"to ask again") from e
        raise RunStopped(f"stopped after {len(results)} documents: {reason}; run the same command again to "
                         f"resume") from e
    results = accepted + pass_results(work)
    failed = [rollout_of(r) for r in results if rollout_of(r)["request_failed"]]
    if len(failed) > cfg.max_error_rate * len(results):
        ask_again_for_failed(work, results)
        raise RunStopped(f"{len(failed)} of {len(results)} documents failed (more than max_error_rate "
                         f"{cfg.max_error_rate:g}), the first with: {failed[0]['error'][:300]}; nothing is recorded "
                         f"as done; run the same command again to ask the failed documents again")
    return results


def run_stats(results: list[dict], run_id: str, seconds: float) -> dict:
    """Documents, failed requests, tokens per document (from the server's `usage`) and the throughput of
    this run (requests and documents it sent, over its wall time)."""
    answers = [rollout_of(doc) for doc in results]
    n = len(answers)
    this_run = [a for a in answers if a["run_id"] == run_id]
    requests = sum(a["requests"] for a in this_run)
    return {
        "documents": n,
        "request_errors": sum(1 for a in answers if a["request_failed"]),
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


def dry_run_text(cfg, work: Path, doc_id: str, payloads: list[dict]) -> str:
    """What a run would start and send, without starting anything: the `vllm serve` command line (the
    port is chosen at start) or the endpoint's URLs, and the request body(s) for one document."""
    config = inference_config(cfg, work)
    if cfg.server_type == "vllm":
        lines = ["# vllm serve command (datatrove picks a free port at start; env USE_TF=0 TRANSFORMERS_NO_TF=1; "
                 f"compile lock in {compile_lock_dir()})", shlex.join(vllm_command(config, "PORT"))]
        url = "http://localhost:PORT"
    else:
        url = endpoint_base(cfg.endpoint_url)
        lines = [f"# endpoint: readiness GET {url}/v1/models"]
    lines.append(f"# request(s) for the first document ({doc_id}): POST {url}/v1/chat/completions")
    lines += [json.dumps(full_payload(config, p), ensure_ascii=False) for p in payloads]
    return "\n".join(lines)
