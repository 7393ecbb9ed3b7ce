"""Process start-up decisions of train/parallel.py: which launcher started us, bad [distributed] settings
refused with the key named (before any device is touched), and the set-up barrier (two processes)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dmd_dist.errors import InputError
from dmd_dist.config import DistributedConfig
from dmd_dist.train.parallel import detect_mode, initialize, local_replicas, replica_mesh

SRUN = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "8", "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1"}


@pytest.mark.parametrize("env, mode", [
    ({}, "local"),
    (SRUN, "slurm"),
    ({**SRUN, "SLURM_NTASKS": "1"}, "local"),  # an allocation with one task: nothing to coordinate
    ({"SLURM_JOB_ID": "7"}, "local"),  # sbatch shell, outside srun
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "mpi"),  # Open MPI
    ({"PMI_SIZE": "2"}, "mpi"),  # MPICH (hydra)
    ({"PMI_SIZE": "1"}, "local"),
])
def test_launcher_detection(env, mode):
    assert detect_mode(env) == mode


@pytest.mark.parametrize("settings, key", [
    ({"coordinator": "node1:1234"}, "distributed.coordinator"),
    ({"coordinator": "node1:1234", "num_processes": 2, "process_id": 2}, "distributed.process_id"),
    ({"mode": "slurm"}, "distributed.mode"),
])
def test_bad_distributed_settings_name_the_key(monkeypatch, settings, key):
    for v in SRUN:
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(InputError) as e:
        initialize(DistributedConfig(**settings))
    assert e.value.key == key


def test_one_process_holds_every_replica():
    assert local_replicas(8, replica_mesh()) == (0, 8)


BARRIER_PROCESS = textwrap.dedent("""
    import json, sys, time
    import jax
    from dmd_dist.train.parallel import any_process, barrier
    rank, port, late = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=rank)
    time.sleep(late * rank)  # process 1 finishes its set-up `late` seconds after process 0
    t0 = time.monotonic()
    barrier("set-up", 60)
    waited = time.monotonic() - t0
    print(json.dumps({"waited": waited, "any": any_process(rank == 1)}))
""")


def test_barrier_holds_every_process_until_the_last_arrives():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = [subprocess.Popen(["timeout", "-s", "KILL", "120", sys.executable, "-c", BARRIER_PROCESS, str(rank),
                               str(port), "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for rank in range(2)]
    out = [p.communicate(timeout=150) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], out[0][1][-2000:] + out[1][1][-2000:]
    first, last = (json.loads(o.strip().splitlines()[-1]) for o, _ in out)
    assert first["waited"] > 3.0  # process 0 was held for the 4 s process 1 slept
    assert last["waited"] < 3.0
    assert first["any"] and last["any"]  # and a collective works afterwards
