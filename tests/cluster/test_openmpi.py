"""launch/mpirun.sh under Debian's Open MPI (openmpi-bin, installed by tests/cluster/slurm_up.sh) instead
of the MPICH wheel of the dev extra: mpi4py's wheel runs on Open MPI's libmpi when told its ABI (the script
sets MPI4PY_MPIABI from `mpirun --version`), and two ranks give the one-process result.  Fails, not
skips, without Open MPI."""

import ast
import shutil
import sys

import pytest

from cluster_helpers import COMMON, CONFIG, LIMIT, ROOT, assert_same_run, base_env, free_port, metrics, run_bounded

pytestmark = pytest.mark.cluster

ITERATIONS = 5


@pytest.fixture(scope="session")  # session, like `reference`, so that a missing Open MPI fails before that run
def open_mpi():
    mpirun = shutil.which("mpirun.openmpi")
    if mpirun is None:
        pytest.fail("Open MPI's mpirun (Debian package openmpi-bin) is not installed: run "
                    "`bash tests/cluster/slurm_up.sh` as root (it installs it), or deselect with -m 'not cluster'")
    # Allowed as root (CI runs as root); 2 ranks on a machine that may have fewer free slots.
    return mpirun, dict(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                        OMPI_MCA_rmaps_base_oversubscribe="1")


def test_mpi4py_wheel_runs_on_open_mpi_with_its_abi_named(open_mpi):
    mpirun, ompi = open_mpi
    # Every rank's (rank, size, library) gathered on rank 0, which prints them: one collective as well.
    probe = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
             "r = c.gather((c.Get_rank(), c.Get_size(), MPI.Get_library_version().splitlines()[0]), root=0); "
             "c.Get_rank() == 0 and print(repr(r))")
    r = run_bounded([mpirun, "-n", "2", sys.executable, "-c", probe], 120,
                    env=base_env(MPI4PY_MPIABI="openmpi", **ompi))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ranks = ast.literal_eval(r.stdout.strip())
    assert [x[:2] for x in ranks] == [(0, 2), (1, 2)], r.stdout
    assert all(x[2].startswith("Open MPI") for x in ranks), r.stdout


def test_launch_mpirun_sh_with_open_mpi_gives_the_one_process_result(open_mpi, tmp_path, reference):
    mpirun, ompi = open_mpi
    work = tmp_path / "run"
    r = run_bounded(["bash", "launch/mpirun.sh", "2", str(CONFIG), str(work), *COMMON,
                     "--set", f"train.iterations={ITERATIONS}", "--set", f"distributed.port={free_port()}"],
                    LIMIT, cwd=ROOT, env=base_env(MPIRUN=mpirun, XLA_FLAGS="--xla_force_host_platform_device_count=1",
                                                  **ompi))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MPI4PY_MPIABI=openmpi" in r.stderr  # launch/mpirun.sh named Open MPI's ABI
    assert "4 replicas on 2 device(s) in 2 process(es)" in r.stderr
    rows = metrics(work)
    assert len(rows) == ITERATIONS
    assert_same_run(rows, reference)
