#!/usr/bin/env bash
# N processes under mpirun (MPICH from the dev extra, or your cluster's MPI on PATH via MPIRUN=mpirun).
# Usage: bash launch/mpirun.sh N CONFIG WORKDIR [extra dmd-dist arguments]
#   e.g. bash launch/mpirun.sh 2 configs/argon_train_quick.toml runs/argon_mpi
#        MPIRUN=mpirun bash launch/mpirun.sh 2 configs/argon_train_quick.toml runs/argon_mpi  # the cluster's MPI
# Each rank uses its own devices (one CPU device each here; set CUDA_VISIBLE_DEVICES per rank on GPUs
# or use the cluster launcher's binding).  Rerun the same command to resume.
# Coordinator port: --set distributed.port=P (or JAX_COORDINATOR_PORT); unset, process 0 picks a free port of
# its node for this run, so two runs on one node stay apart (docs/cluster.md, "Coordinator exposure").
#
# Which MPI library the ranks use: mpi4py's wheel holds its extension built twice, for the MPICH ABI
# (MPICH, Intel MPI, MVAPICH, Cray MPICH) and for Open MPI, and loads the first libmpi it finds, looking
# in .venv/lib first, where the dev extra's `mpich` wheel put MPICH's.  Under another MPI's mpirun that
# is the wrong library (Open MPI's ranks abort in MPI_Init: "unsupported PMI version PMIx"), so with an
# mpirun from outside .venv this script sets MPI4PY_MPIABI to the launcher's ABI (openmpi or mpich, from
# `mpirun --version`), and the system's loader finds that MPI's libmpi (its LD_LIBRARY_PATH, e.g. from
# `module load`, or the system's library directories).  Set MPI4PY_MPIABI or MPI4PY_LIBMPI (a libmpi
# path) yourself to choose otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: bash launch/mpirun.sh N CONFIG WORKDIR [args]" >&2; exit 2; }
n="$1" config="$2" workdir="$3"; shift 3
bash launch/setup.sh dev
mpirun="${MPIRUN:-.venv/bin/mpirun}"
path="$(command -v "$mpirun")" || { echo "error: MPIRUN: '$mpirun' not found" >&2; exit 2; }
version="$("$mpirun" --version 2>&1 | head -n 5 || true)"
openmpi=0
case "$version" in *"Open MPI"*|*OpenRTE*) openmpi=1 ;; esac
if [ -z "${MPI4PY_MPIABI:-}${MPI4PY_LIBMPI:-}" ] && [[ "$(readlink -f "$path")" != "$(readlink -f .venv)"/* ]]; then
  if [ "$openmpi" = 1 ]; then
    export MPI4PY_MPIABI=openmpi
  elif [[ "$version" == *HYDRA* || "$version" == *MPICH* || "$version" == *"Intel(R) MPI"* || "$version" == *MVAPICH* ]]; then
    export MPI4PY_MPIABI=mpich
  fi
  echo "mpirun.sh: $path ($(head -n 1 <<<"$version")): MPI4PY_MPIABI=${MPI4PY_MPIABI:-unset, mpi4py chooses}" >&2
fi
args=()
if [ "$openmpi" = 1 ]; then
  # Open MPI hands this environment only to the ranks on this node: pass on what the ranks need.
  for v in $(compgen -e); do
    case "$v" in MPI4PY_*|XLA_*|JAX_*|TF_CPP_*|PYTHONPATH) args+=(-x "$v") ;; esac
  done
fi
exec "$mpirun" ${args[@]+"${args[@]}"} -n "$n" .venv/bin/dmd-dist train "$config" --workdir "$workdir" \
  --set distributed.mode=mpi "$@"
