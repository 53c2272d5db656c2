#!/usr/bin/env bash
# The test command (README; .ci/run runs exactly this). Creates a fresh virtual environment without the
# system's site-packages, installs curate into it with the README's own command (install.sh), starts
# the services the tests use, runs pytest there, and stops the services again.
#   CURATE_TEST_VENV=DIR   where the test environment lives (default .venv-test)
#   CURATE_KEEP_VENV=1     reuse it instead of creating it afresh (quicker reruns while developing)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CURATE_TEST_VENV:-.venv-test}"
if [[ "${CURATE_KEEP_VENV:-}" != 1 ]]; then
  rm -rf "$venv"
fi
CURATE_VENV="$venv" bash install.sh --test
export VIRTUAL_ENV="$(cd "$venv" && pwd)"
export PATH="$VIRTUAL_ENV/bin:$PATH"
# headless Chromium renders the report page in tests/test_report.py
command -v chromium >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
# a real single-node Slurm cluster for tests/test_slurm.py (installs the Debian packages if missing)
slurm_dir=$(mktemp -d /tmp/curate-slurm.XXXXXX)
trap 'bash slurm/stop.sh "$slurm_dir"; rm -rf "$slurm_dir"' EXIT
bash slurm/start.sh "$slurm_dir"
export SLURM_CONF="$slurm_dir/slurm.conf"
python -m pytest "$@"
