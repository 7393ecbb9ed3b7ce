"""Starting dmd-dist as two real processes on one machine, as `srun` starts them (faked SLURM variables),
and reading their results: shared by the tests of this directory."""

import json
import os
import signal
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


# How a survivor of a lost process ends (train/parallel.py): a collective that fails because the peer's
# connection dropped raises in Python, and dmd-dist exits 5 with `error: process I of 2: lost process J
# (...)`; or jax.distributed's own error handling aborts it first (SIGABRT) with jax's "Terminating process"
# line, which names the task whose heartbeats stopped or, when process 0 (the coordinator) is the one lost,
# "the leader task".  Which comes first is a race when the coordinator dies.
JAX_ABORT = "Terminating process because the JAX distributed service detected fatal errors"
JAX_NAMES = {0: "Either the leader task was preempted/died", 1: "stopped sending heartbeats):\n1\n"}
SURVIVOR_LIMIT = 60  # seconds: the survivor must not hold the allocation longer


def kill_one_and_check_the_survivor(procs, victim):
    """kill -9 of process `victim` of two (as when its node dies): the other exits non-zero within
    SURVIVOR_LIMIT seconds, naming the lost process.  Returns the survivor's stderr."""
    subprocess.run(["pkill", "-KILL", "-P", str(procs[victim].pid)])  # the Python child of `timeout`
    t0 = time.monotonic()
    survivor = procs[1 - victim]
    try:
        _, err = survivor.communicate(timeout=SURVIVOR_LIMIT + 30)
    except subprocess.TimeoutExpired:
        survivor.kill()
        pytest.fail(f"process {1 - victim} still running {SURVIVOR_LIMIT + 30} s after process {victim} was killed")
    seconds, code = time.monotonic() - t0, survivor.returncode
    procs[victim].communicate(timeout=30)
    print(f"process {1 - victim} exited {code} {seconds:.1f} s after process {victim} was killed")  # -rP shows it
    assert seconds < SURVIVOR_LIMIT, err[-3000:]
    if code == 5:
        assert f"error: process {1 - victim} of 2: lost process {victim} (" in err, err[-3000:]
        assert "resumed from its last checkpoint" in err, err[-3000:]
    else:  # `timeout` passes its child's death by a signal on as its own
        assert code == -signal.SIGABRT and JAX_ABORT in err and JAX_NAMES[victim] in err, (code, err[-3000:])
    return err
