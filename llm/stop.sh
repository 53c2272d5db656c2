#!/usr/bin/env bash
# Stop the test LLM server that llm/start.sh started: exactly the PID it recorded, SIGTERM then SIGKILL.
#   bash llm/stop.sh [DIR]    (default: $CURATE_LLM_DIR or /tmp/curate-llm)
set -euo pipefail
dir=$(realpath -m "${1:-${CURATE_LLM_DIR:-/tmp/curate-llm}}")
pidfile="$dir/server.pid"
if [[ ! -f "$pidfile" ]]; then
  echo "llm: no server recorded in $dir" >&2
  exit 0
fi
pid=$(cat "$pidfile")
# a PID is reused after its process ends: stop it only if it is still llama.cpp's server
if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "llama_cpp.server"; then
  kill -TERM "$pid"
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  echo "llm: stopped PID $pid"
else
  echo "llm: PID $pid is not running the server any more" >&2
fi
rm -f "$pidfile"
