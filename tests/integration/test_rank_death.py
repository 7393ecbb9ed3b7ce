"""A process of a two-process run killed outright (kill -9, as when its node dies): the survivor must not
hold the allocation.  It exits non-zero within 60 s naming the lost process, and rerunning both resumes
from the last checkpoint, bit-identical to the uninterrupted run.

The survivor exits one of two ways (train/parallel.py): a collective that fails because the peer's
connection dropped raises in Python, and dmd-dist exits 5 with `error: process I of 2: lost process J
(...)`; or jax.distributed's own error handling aborts it first (SIGABRT) with jax's "Terminating
process ..." line, which names the task whose heartbeats stopped or, when process 0 (the coordinator) is
the one lost, "the leader task".  Which comes first is a race when the coordinator dies."""

import signal
import subprocess
import time

import pytest

from multiprocess_helpers import LIMIT, finish, free_port, metrics, start_slurm_pair

JAX_ABORT = "Terminating process because the JAX distributed service detected fatal errors"
JAX_NAMES = {0: "Either the leader task was preempted/died", 1: "stopped sending heartbeats):\n1\n"}


def wait_for_checkpoint(work, procs):
    """The first checkpoint committed (orbax renames its temporary directory to the step number once every
    process has written its part), so that there is something to resume from."""
    t0 = time.monotonic()
    while not (work / "checkpoints/1").is_dir():
        assert time.monotonic() - t0 < LIMIT and all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        time.sleep(0.05)


def kill_and_time_the_survivor(procs, victim):
    subprocess.run(["pkill", "-KILL", "-P", str(procs[victim].pid)])  # the Python child of `timeout`
    t0 = time.monotonic()
    survivor = procs[1 - victim]
    try:
        _, err = survivor.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        survivor.kill()
        pytest.fail(f"process {1 - victim} still running 90 s after process {victim} was killed")
    procs[victim].communicate(timeout=30)
    return survivor.returncode, time.monotonic() - t0, err


@pytest.mark.parametrize("victim", [1, 0], ids=["kill-9-process-1", "kill-9-process-0-the-coordinator"])
def test_a_killed_process_ends_the_other_which_names_it_then_the_run_resumes(tmp_path, slurm_pair, victim):
    work = tmp_path / "run"
    procs = start_slurm_pair(work, free_port())
    wait_for_checkpoint(work, procs)
    code, seconds, err = kill_and_time_the_survivor(procs, victim)
    print(f"process {1 - victim} exited {code} {seconds:.1f} s after process {victim} was killed")  # -rP shows it
    assert seconds < 60, err[-3000:]
    ours = f"error: process {1 - victim} of 2: lost process {victim} ("
    if code == 5:
        assert ours in err and "resumed from its last checkpoint" in err, err[-3000:]
    else:  # `timeout` passes its child's death by a signal on as its own
        assert code == -signal.SIGABRT and JAX_ABORT in err and JAX_NAMES[victim] in err, (code, err[-3000:])
    assert len(metrics(work)) < len(slurm_pair)  # killed mid-run

    codes, errs = finish(start_slurm_pair(work, free_port()))
    assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    assert "resuming from iteration" in errs[0]
    assert [m["params_sha256"] for m in metrics(work)] == [m["params_sha256"] for m in slurm_pair]
