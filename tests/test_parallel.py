"""Process start-up decisions of train/parallel.py that need no second process: which launcher started
us, and bad [distributed] settings refused with the key named (before any device is touched)."""

import pytest

from dmd_dist.errors import InputError
from dmd_dist.train.config import DistributedConfig
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
