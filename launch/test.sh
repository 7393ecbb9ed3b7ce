#!/usr/bin/env bash
# Set-up plus the whole test suite.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh dev
exec .venv/bin/python -m pytest -q -n 2 --dist loadgroup --timeout=900 "$@"
