#!/usr/bin/env bash
# N processes under mpirun (MPICH from the dev extra, or your cluster's MPI on PATH via MPIRUN=mpirun).
# Usage: bash launch/mpirun.sh N CONFIG WORKDIR [extra dmd-dist arguments]
#   e.g. bash launch/mpirun.sh 2 configs/argon_train_quick.toml runs/argon_mpi
# Each rank uses its own devices (one CPU device each here; set CUDA_VISIBLE_DEVICES per rank on GPUs
# or use the cluster launcher's binding).  Rerun the same command to resume.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: bash launch/mpirun.sh N CONFIG WORKDIR [args]" >&2; exit 2; }
n="$1" config="$2" workdir="$3"; shift 3
bash launch/setup.sh dev
mpirun="${MPIRUN:-.venv/bin/mpirun}"
exec "$mpirun" -n "$n" .venv/bin/dmd-dist train "$config" --workdir "$workdir" --set distributed.mode=mpi "$@"
