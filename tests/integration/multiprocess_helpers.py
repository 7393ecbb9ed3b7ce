"""Starting dmd-dist as two real processes on one machine, as `srun` starts them (faked SLURM variables),
and reading their results: shared by the tests of this directory."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/tiny_argon_train.toml"
LIMIT = 300  # seconds per process


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(workdir, *extra):
    return ["-m", "dmd_dist", "train", str(CONFIG), "--workdir", str(workdir), "--set", "output.progress=false", *extra]


def base_env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=1")
    for k in list(env):  # a test run inside a real allocation must not see its scheduler
        if k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_")):
            del env[k]
    return env


def start_slurm_pair(workdir, port, job_id="4242", extra=()):
    procs = []
    for rank in range(2):
        env = dict(base_env(), SLURM_JOB_ID=job_id, SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                   SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), JAX_COORDINATOR_PORT=str(port))
        procs.append(subprocess.Popen(["timeout", "-s", "KILL", str(LIMIT), sys.executable, *train_args(workdir, *extra)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    return procs


def finish(procs):
    out = [p.communicate(timeout=LIMIT + 30) for p in procs]
    return [p.returncode for p in procs], [e for _, e in out]


def metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a, b, rel=1e-10):
    """`a` agrees with the first len(a) iterations of `b` (a run's rows do not depend on its length)."""
    assert a and [m["iteration"] for m in a] == [m["iteration"] for m in b[:len(a)]]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=rel)
        for name in y["params"]:
            assert x["params"][name] == pytest.approx(y["params"][name], rel=rel)


def wait_for_metrics(work, procs, lines=1):
    t0 = time.time()
    path = work / "metrics.jsonl"
    while not (path.exists() and len(path.read_text().splitlines()) >= lines):
        assert time.time() - t0 < LIMIT and all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        time.sleep(0.05)
