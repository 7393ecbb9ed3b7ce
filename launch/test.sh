#!/usr/bin/env bash
# Set-up plus the whole test suite.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh dev
# --dist loadfile: each test file runs on one worker, so its module-scoped reference runs are made once.
# (xdist 3.8's loadgroup with pytest 9.2 ignored module-level xdist_group marks and split those files
# across both workers, making every shared reference run twice.)
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --timeout=900 "$@"
