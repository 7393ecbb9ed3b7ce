#!/usr/bin/env bash
# Set-up plus the main job on the embedded default (CPU): liquid argon, a small real run.
# Usage: bash launch/quickstart.sh [WORKDIR]   (default runs/argon_quick)
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh dev
exec .venv/bin/dmd-dist simulate configs/argon_quick.toml --workdir "${1:-runs/argon_quick}"
