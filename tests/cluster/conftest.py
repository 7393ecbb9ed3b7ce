"""The launch paths run for real: a one-node SLURM cluster (tests/cluster/slurm_up.sh) and Debian's Open
MPI.  Every test here is marked `cluster` (run them alone with `pytest -m cluster` or `pytest tests/cluster`;
leave them out with `-m "not cluster"`).  They fail, never skip, when the cluster or Open MPI is missing:
launch/test.sh (the README's test command) brings both up before the suite and tears them down after.

Every run is the tiny argon training of tests/integration/test_multiprocess.py with list headroom
(`potential.capacity_factor=1.5`: no re-allocation, so fewer programs to compile) on two devices in all,
compared with one reference: one local process with 2 simulated CPU devices, computed once per session
and shared by the xdist workers (tests/session_runs.py).  One process with 2 devices and two processes with
one each give bit-identical parameters on this machine; the tests hold other layouts to 1e-10 (as
test_multiprocess.py does) and the same layout bit for bit.
"""

import sys

import pytest

from cluster_helpers import COMMON, CONFIG, LIMIT, REFERENCE_ITERATIONS, base_env, metrics, run_bounded
from session_runs import once_per_session


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: runs the launch paths for real (SLURM test cluster of "
                                       "tests/cluster/slurm_up.sh, Open MPI); fails when they are not up")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """metrics.jsonl rows of one local process with 2 simulated devices, REFERENCE_ITERATIONS iterations
    (a checkpoint only at the end, which changes no bit of the rows)."""
    def run(work):
        r = run_bounded([sys.executable, "-m", "dmd_dist", "train", str(CONFIG), "--workdir", str(work), *COMMON,
                         "--set", f"train.iterations={REFERENCE_ITERATIONS}",
                         "--set", f"train.checkpoint_every={REFERENCE_ITERATIONS}"],
                        LIMIT, env=base_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
        assert r.returncode == 0, r.stderr[-3000:]
        assert "4 replicas on 2 device(s) in 1 process(es)" in r.stderr

    rows = metrics(once_per_session(tmp_path_factory, "cluster-reference", run))
    assert len(rows) == REFERENCE_ITERATIONS
    return rows
