#!/usr/bin/env bash
# Set-up plus one of the paper's workflows end to end (pre-train, refine, evaluate, figures, table):
#   bash launch/reproduce.sh argon-mpnn-quick [--out DIR]   # 2 CPU cores, about 30 minutes
#   bash launch/reproduce.sh argon-mpnn [--out DIR]         # the paper's size, for a GPU
#   bash launch/reproduce.sh water-ir-classical [--out DIR] # 2 CPU cores: force constants from an IR spectrum
#   bash launch/reproduce.sh water-ir-mpnn [--out DIR]      # 2 CPU cores: the MPNN refined on an IR spectrum
#   (all: python -m dmd_dist.workflows --help)
# Results in DIR (default runs/NAME): results.md, results.json, figures/; rerun to continue after a kill.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh dev
exec .venv/bin/python -m dmd_dist.workflows "$@"
