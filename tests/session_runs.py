"""Runs that several test files compare with, made once per test session: with `--dist loadfile` those
files may land on different xdist workers, and each worker would otherwise repeat the run (a process
start-up and its compilation, a minute or more for a multi-process run)."""

import fcntl
import os
import shutil


def once_per_session(tmp_path_factory, name, run):
    """The directory `name` after `run(directory)` filled it, shared by every worker of this session (under a
    file lock: the first worker to ask runs it, the others wait and read).  A failed run is not marked done,
    so the next worker to ask tries again and reports its own failure."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, above every worker's own
    work = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (work / ".done").exists():
            shutil.rmtree(work, ignore_errors=True)
            run(work)
            (work / ".done").touch()
    return work
