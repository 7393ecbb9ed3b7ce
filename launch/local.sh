#!/usr/bin/env bash
# One process on this machine, replicas over N devices: the GPUs it has, or N simulated CPU devices.
# Usage: bash launch/local.sh CONFIG WORKDIR [N_CPU_DEVICES] [-- extra dmd-dist arguments]
#   e.g. bash launch/local.sh configs/argon_train_quick.toml runs/argon 4
# Rerun the same command to resume.  Exit code 3: stopped by SIGTERM after a checkpoint (rerun it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash launch/local.sh CONFIG WORKDIR [N_CPU_DEVICES] [-- args]" >&2; exit 2; }
config="$1" workdir="$2"; shift 2
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  export XLA_FLAGS="--xla_force_host_platform_device_count=$1 ${XLA_FLAGS:-}"; shift
fi
[ "${1:-}" = "--" ] && shift
bash launch/setup.sh dev
exec .venv/bin/dmd-dist train "$config" --workdir "$workdir" --set distributed.mode=local "$@"
