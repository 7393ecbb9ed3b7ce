#!/usr/bin/env bash
# Set-up plus the whole test suite.  Extra arguments go to pytest.
# tests/cluster submits jobs to a real one-node SLURM and runs Open MPI's mpirun: this script brings that
# test cluster up first (tests/cluster/slurm_up.sh: Debian packages, daemons; needs root) and tears it down
# at the end.  Where that cannot be, DMD_TEST_CLUSTER=0 leaves those tests out; otherwise they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh dev
select=(-m "not faults_long")  # the fault suite's property runs and repeated fault cases: on demand (benchmarks/faults.py)
if [ "${DMD_TEST_CLUSTER:-1}" = 1 ]; then
  trap 'bash tests/cluster/slurm_down.sh' EXIT
  bash tests/cluster/slurm_up.sh >/dev/null \
    || echo "test.sh: the SLURM test cluster did not start: tests/cluster will fail (DMD_TEST_CLUSTER=0 leaves them out)" >&2
else
  select=(-m "not cluster and not faults_long")
fi
# --dist loadfile: each test file runs on one worker, so its module-scoped reference runs are made once.
# (xdist 3.8's loadgroup with pytest 9.2 ignored module-level xdist_group marks and split those files
# across both workers, making every shared reference run twice.)
# --durations: the slowest tests, for keeping the suite's time in view.
.venv/bin/python -m pytest -q -n 2 --dist loadfile --timeout=900 --durations=15 ${select[@]+"${select[@]}"} "$@"
