#!/usr/bin/env bash
# The test command (README; .ci/run runs exactly this). Installs what the tests need, starts the
# services they use, runs pytest, and stops the services again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash install.sh --test
python3 -m pytest "$@"
