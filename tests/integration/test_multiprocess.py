"""Two real processes on one machine, as `srun` (faked SLURM variables) and as `mpirun` (MPICH from
PyPI) start them: the same result as one process, and a run preempted and then one of its processes killed
mid-run resumes bit-identical.  Every process runs under `timeout -s KILL`, so a hung collective fails the test instead of hanging CI."""

import os
import shutil
import subprocess
import sys

from multiprocess_helpers import (LIMIT, assert_same_run, base_env, finish, free_port, kill_one_and_check_the_survivor,
                                  metrics, start_slurm_pair, train_args, wait_for_metrics)


def test_two_srun_tasks_give_the_one_process_result(slurm_pair, one_process):
    assert_same_run(slurm_pair, one_process)


def test_two_mpirun_ranks_give_the_one_process_result(tmp_path, one_process):
    # Fails, not skips, without mpirun: the dev extra installs it (the `mpich` wheel), so a missing one is a
    # broken environment, and a skip would hide the untested launcher from CI's pass count.
    mpirun = shutil.which("mpirun", path=os.path.dirname(sys.executable))
    assert mpirun is not None, "mpirun (the `mpich` package of the dev extra) is not installed next to " + sys.executable
    # No distributed.port: process 0 picks a free port and broadcasts it over MPI (the default; Open MPI's
    # test in tests/cluster gives one explicitly).
    r = subprocess.run(["timeout", "-s", "KILL", str(LIMIT), mpirun, "-n", "2", sys.executable,
                        *train_args(tmp_path / "run")],
                       capture_output=True, text=True, env=base_env(), timeout=LIMIT + 30)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "in 2 process(es)" in r.stderr and "coordinator service listening on " in r.stderr
    assert_same_run(metrics(tmp_path / "run"), one_process)


def test_sigterm_then_the_death_of_a_process_of_a_two_process_run_resumes_bit_identical(tmp_path, slurm_pair):
    """One run's life on a cluster: preempted (SIGTERM to rank 1 only, as when a node is drained: the ranks
    still agree on the iteration, save one checkpoint, both exit 3), resumed, then rank 1 killed outright
    (kill -9, as when its node dies: rank 0 exits non-zero within 60 s naming it), resumed again, and
    finished: every iteration's parameters bit-identical to the uninterrupted run.  One life instead of
    separate runs saves two-process start-ups (about a minute each); the coordinator's death is
    test_rank_death.py, kill -9 of every process at random moments benchmarks/faults.py."""
    work = tmp_path / "run"
    procs = start_slurm_pair(work, free_port())
    wait_for_metrics(work, procs)
    subprocess.run(["pkill", "-TERM", "-P", str(procs[1].pid)])  # the Python child of `timeout`
    codes, errs = finish(procs)
    assert codes == [3, 3], errs[0][-3000:] + errs[1][-3000:]
    stopped = len(metrics(work))
    assert stopped < len(slurm_pair) - 1 and f"after iteration {stopped}" in errs[0]

    procs = start_slurm_pair(work, free_port())
    wait_for_metrics(work, procs, lines=stopped + 1)
    err = kill_one_and_check_the_survivor(procs, victim=1)
    assert f"resuming from iteration {stopped}" in err
    assert len(metrics(work)) < len(slurm_pair)  # killed mid-run

    codes, errs = finish(start_slurm_pair(work, free_port()))
    assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    assert "resuming from iteration" in errs[0]
    assert [m["params_sha256"] for m in metrics(work)] == [m["params_sha256"] for m in slurm_pair]
