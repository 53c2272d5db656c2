#!/usr/bin/env bash
# Stop the cluster slurm/start.sh started (by PID: slurmd, slurmctld, and munged if it started it).
#   bash slurm/stop.sh [SCRATCH_DIR]
set -uo pipefail
dir=$(realpath -m "${1:-${CURATE_SLURM_DIR:-/tmp/curate-slurm}}")
for daemon in slurmd slurmctld munged; do
  pidfile="$dir/run/$daemon.pid"
  [[ -f "$pidfile" ]] || continue
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
done
echo "slurm: stopped ($dir)" >&2
