"""Helpers of the tests in tests/cluster (conftest.py has the shared reference run)."""

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/tiny_argon_train.toml"
COMMON = ["--set", "output.progress=false", "--set", "potential.capacity_factor=1.5"]
REFERENCE_ITERATIONS = 200  # the longest run here (test_slurm's time-limit job)
LIMIT = 420  # seconds for any one local run


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra):
    """This checkout's dmd_dist, on the CPU, without any scheduler or MPI launcher of the caller."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    for k in list(env):
        if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "OMPI_", "PMI_", "PMIX_", "MPI4PY_")) \
                or k == "XLA_FLAGS":
            del env[k]
    env.update(extra)
    return env


def metrics(workdir):
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def assert_same_run(a, b, rel=1e-10):
    """`a` agrees with the first len(a) iterations of `b` (a run's rows do not depend on its length)."""
    assert [m["iteration"] for m in a] == [m["iteration"] for m in b[:len(a)]]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=rel)
        for name in y["params"]:
            assert x["params"][name] == pytest.approx(y["params"][name], rel=rel)


def run_bounded(cmd, timeout, **kw):
    """subprocess.run in a session of its own, whose every process is killed when `timeout` passes (an
    mpirun killed alone can leave its ranks behind)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(map(str, cmd[:6]))} ... did not finish within {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)
