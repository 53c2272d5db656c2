#!/usr/bin/env bash
# The test command (README; .ci/run runs exactly this). Installs what the tests need, starts the
# services they use, runs pytest, and stops the services again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash install.sh --test
# headless Chromium renders the report page in tests/test_report.py
command -v chromium >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
# a real single-node Slurm cluster for tests/test_slurm.py (installs the Debian packages if missing)
slurm_dir=$(mktemp -d /tmp/curate-slurm.XXXXXX)
trap 'bash slurm/stop.sh "$slurm_dir"' EXIT
bash slurm/start.sh "$slurm_dir"
export SLURM_CONF="$slurm_dir/slurm.conf"
python3 -m pytest "$@"
