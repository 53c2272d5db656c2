#!/usr/bin/env bash
# Start a real single-node Slurm cluster (munged, slurmctld, slurmd) on this machine, as root,
# without systemd. Installs the Debian packages first when they are missing.
#   bash slurm/start.sh [SCRATCH_DIR]      (default: $CURATE_SLURM_DIR or /tmp/curate-slurm)
#   source SCRATCH_DIR/env                 (sets SLURM_CONF for sbatch/squeue/scancel)
#   bash slurm/stop.sh [SCRATCH_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(realpath -m "${1:-${CURATE_SLURM_DIR:-/tmp/curate-slurm}}")
conf="$dir/slurm.conf"

if ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm: installing slurmctld slurmd slurm-client munge" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if alive "$dir/run/slurmctld.pid" && alive "$dir/run/slurmd.pid"; then
  echo "slurm: already running in $dir" >&2
  exit 0
fi
mkdir -p "$dir"/{state,spool,log,run}

# munge: one key, one daemon (started by us only when none runs; stop.sh stops only ours)
mkdir -p /run/munge /etc/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
fi
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- munged --force
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
  cp /run/munge/munged.pid "$dir/run/munged.pid"
fi

mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
sed -e "s|@DIR@|$dir|g" -e "s|@CPUS@|$(nproc)|g" -e "s|@MEM_MB@|$mem_mb|g" \
    -e "s|@CTLD_PORT@|${CURATE_SLURMCTLD_PORT:-6817}|g" -e "s|@SLURMD_PORT@|${CURATE_SLURMD_PORT:-6818}|g" \
    "$here/slurm.conf.in" > "$conf"
echo "export SLURM_CONF=$conf" > "$dir/env"
export SLURM_CONF="$conf"

slurmctld -f "$conf"
slurmd -f "$conf" -N localhost
for _ in $(seq 100); do
  [[ "$(sinfo -h -N -o %t 2>/dev/null)" == idle* ]] && { echo "slurm: ready (SLURM_CONF=$conf)" >&2; exit 0; }
  sleep 0.2
done
echo "slurm: the node did not come up; see $dir/log/" >&2
sinfo -N >&2 || true
exit 1
