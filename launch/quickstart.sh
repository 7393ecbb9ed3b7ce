#!/usr/bin/env bash
# Set-up plus the main job on the embedded default (CPU with 4 simulated devices): refine LJ argon
# against the paper's diffusion coefficient, a small real training run (~2 minutes on 2 cores), then plot it.
# Usage: bash launch/quickstart.sh [WORKDIR]   (default runs/argon_train_quick); rerun to resume.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh dev
workdir="${1:-runs/argon_train_quick}"
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=4}"
.venv/bin/dmd-dist train configs/argon_train_quick.toml --workdir "$workdir"
exec .venv/bin/dmd-dist plot "$workdir"
