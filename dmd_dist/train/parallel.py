"""Processes and devices: `jax.distributed` start-up, a 1-D mesh named `replica` over every device of
every process, and placing replica batches on it.

`initialize` must run before anything touches a device.  Modes (`[distributed] mode`):
- `local`: one process (its own real or simulated devices); nothing to initialize;
- `slurm`: `srun` tasks, detected from SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID,
  SLURM_LOCALID; the coordinator is the first node of the step;
- `mpi`: `mpirun`/`mpiexec` ranks (Open MPI, MPICH, Intel MPI) through mpi4py;
- explicit: `coordinator = "host:port"`, `num_processes`, `process_id` in the config;
- `auto` (default): slurm if its variables describe more than one task, mpi if an MPI launcher started
  more than one rank, else local.
`distributed.port` (or the environment's JAX_COORDINATOR_PORT) sets the coordinator port, to keep two
jobs on one node apart.

Processes reach their first collective at different times when their set-up differs in cost, e.g. when
process 0 loads its programs from the compilation cache and another compiles them (on CPU the cache key
holds the device, so only process 0's process-local programs are found).  XLA:CPU's collectives give up
when a peer is 30 s late, so `barrier` (the coordination service's, with a timeout of our choosing) lines
the processes up first.
"""

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dmd_dist.errors import InputError

AXIS = "replica"
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def detect_mode(env=None):
    env = os.environ if env is None else env
    if all(v in env for v in SLURM_VARIABLES) and int(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if any(int(env.get(v, "1")) > 1 for v in MPI_SIZE_VARIABLES):
        return "mpi"
    return "local"


def initialize(dcfg):
    """Start jax.distributed as `[distributed]` says; returns the mode used."""
    if dcfg.coordinator is not None:
        if dcfg.num_processes is None or dcfg.process_id is None:
            raise InputError("distributed.coordinator", "an explicit coordinator needs num_processes and process_id")
        if dcfg.process_id >= dcfg.num_processes:
            raise InputError("distributed.process_id", f"{dcfg.process_id} >= num_processes {dcfg.num_processes}")
        jax.distributed.initialize(coordinator_address=dcfg.coordinator, num_processes=dcfg.num_processes,
                                   process_id=dcfg.process_id)
        return "explicit"
    mode = detect_mode() if dcfg.mode == "auto" else dcfg.mode
    if mode == "local":
        return mode
    if dcfg.port is not None:
        os.environ["JAX_COORDINATOR_PORT"] = str(dcfg.port)
    if mode == "slurm":
        missing = [v for v in SLURM_VARIABLES if v not in os.environ]
        if missing:
            raise InputError("distributed.mode", f"slurm, but {', '.join(missing)} not set (launch with srun)")
        jax.distributed.initialize(cluster_detection_method="slurm")
    else:
        if "OMPI_COMM_WORLD_SIZE" in os.environ and not {"MPI4PY_MPIABI", "MPI4PY_LIBMPI"} & set(os.environ):
            # Started by Open MPI's mpirun: mpi4py's wheel would load the first libmpi it finds (the dev
            # extra's MPICH, in .venv/lib) and abort in MPI_Init; ask for its Open MPI build instead.
            os.environ["MPI4PY_MPIABI"] = "openmpi"
        jax.distributed.initialize(cluster_detection_method="mpi4py")
    return mode


def replica_mesh(devices=None):
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def check_replica_count(count, mesh):
    n = mesh.devices.size
    if count % n:
        raise InputError("replicas.count", f"{count} replicas cannot be shared evenly by {n} devices; use a "
                                           f"multiple of {n}")


def local_replicas(count, mesh):
    """(offset, local count): the global replica indices this process holds, from the mesh layout."""
    sharding = NamedSharding(mesh, P(AXIS))
    starts = [idx[0].start or 0 for idx in sharding.addressable_devices_indices_map((count,)).values()]
    local = count // mesh.devices.size * len(starts)
    return min(starts), local


def shard_replicas(tree, mesh):
    """Every array's leading (replica) axis split over the mesh (arrays already global stay as they are)."""
    return jax.device_put(tree, NamedSharding(mesh, P(AXIS)))


def from_process_local(tree, mesh):
    """Global replica-sharded arrays from this process's replicas (leading axis: its local count)."""
    sharding = NamedSharding(mesh, P(AXIS))
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


def process_local(a):
    """This process's rows (leading replica axis) of a replica-sharded global array, as numpy, in order."""
    rows = {s.index[0].start or 0: s.data for s in a.addressable_shards}  # replicated: one entry
    return np.concatenate([np.asarray(rows[k]) for k in sorted(rows)])


def replicate(tree, mesh):
    """The same value on every device of every process (every process passes the same value)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


def barrier(name, timeout_s, setting="distributed.setup_timeout"):
    """Wait until every process has called `barrier(name, ...)`; not a device collective, so a process
    may be up to `timeout_s` late.  A no-op in one process."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client jax.distributed.initialize started; no public handle

    try:
        distributed.global_state.client.wait_at_barrier(f"dmd_dist/{name}", int(timeout_s * 1000))
    except jax.errors.JaxRuntimeError as e:
        raise RuntimeError(f"process {jax.process_index()}: not every process reached '{name}' within "
                           f"{timeout_s:g} s ({setting}); a process may have died or be stuck: {e}") from e


def any_process(flag):
    """True on every process if `flag` is true on any (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))
