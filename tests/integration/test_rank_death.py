"""The coordinator (process 0) of a two-process run killed outright (kill -9, as when its node dies): the
survivor must not hold the allocation.  It exits non-zero within 60 s naming the lost process
(multiprocess_helpers.kill_one_and_check_the_survivor says how), and rerunning both resumes from the last
checkpoint, bit-identical to the uninterrupted run.  The death of process 1 is one stage of
test_multiprocess.py's run life."""

import time

from multiprocess_helpers import (LIMIT, finish, free_port, kill_one_and_check_the_survivor, metrics,
                                  start_slurm_pair)


def wait_for_checkpoint(work, procs):
    """The first checkpoint committed (orbax renames its temporary directory to the step number once every
    process has written its part), so that there is something to resume from."""
    t0 = time.monotonic()
    while not (work / "checkpoints/1").is_dir():
        assert time.monotonic() - t0 < LIMIT and all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        time.sleep(0.05)


def test_a_killed_coordinator_ends_the_other_process_which_names_it_then_the_run_resumes(tmp_path, slurm_pair):
    work = tmp_path / "run"
    procs = start_slurm_pair(work, free_port())
    wait_for_checkpoint(work, procs)
    kill_one_and_check_the_survivor(procs, victim=0)
    assert len(metrics(work)) < len(slurm_pair)  # killed mid-run

    codes, errs = finish(start_slurm_pair(work, free_port()))
    assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    assert "resuming from iteration" in errs[0]
    assert [m["params_sha256"] for m in metrics(work)] == [m["params_sha256"] for m in slurm_pair]
