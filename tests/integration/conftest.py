"""The uninterrupted runs the multi-process tests compare with, computed once per session (each costs a
process start-up and its compilation)."""

import subprocess
import sys

import pytest

from multiprocess_helpers import LIMIT, base_env, finish, free_port, metrics, start_slurm_pair, train_args


@pytest.fixture(scope="session")
def one_process(tmp_path_factory):
    work = tmp_path_factory.mktemp("one")
    r = subprocess.run([sys.executable, *train_args(work)], capture_output=True, text=True, env=base_env(),
                       timeout=LIMIT)
    assert r.returncode == 0, r.stderr[-3000:]
    return metrics(work)


@pytest.fixture(scope="session")
def slurm_pair(tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm")
    codes, errs = finish(start_slurm_pair(work, free_port()))
    assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    assert "4 replicas on 2 device(s) in 2 process(es)" in errs[0]
    return metrics(work)
