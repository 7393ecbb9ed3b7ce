"""The uninterrupted runs the multi-process tests compare with, computed once per session and shared by the
xdist workers (tests/session_runs.py): each costs a process start-up and its compilation."""

import subprocess
import sys

import pytest

from multiprocess_helpers import LIMIT, base_env, finish, free_port, metrics, start_slurm_pair, train_args
from session_runs import once_per_session


@pytest.fixture(scope="session")
def one_process(tmp_path_factory):
    def run(work):
        r = subprocess.run([sys.executable, *train_args(work)], capture_output=True, text=True, env=base_env(),
                           timeout=LIMIT)
        assert r.returncode == 0, r.stderr[-3000:]

    return metrics(once_per_session(tmp_path_factory, "train-lj-1-device", run))  # tests/test_train.py's too


@pytest.fixture(scope="session")
def slurm_pair(tmp_path_factory):
    def run(work):
        codes, errs = finish(start_slurm_pair(work, free_port()))
        assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
        assert "4 replicas on 2 device(s) in 2 process(es)" in errs[0]

    return metrics(once_per_session(tmp_path_factory, "slurm-pair", run))
