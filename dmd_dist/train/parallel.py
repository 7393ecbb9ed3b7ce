"""Processes: `jax.distributed` start-up, barriers, lost peers.  The mesh of every device of every
process, and placing replica batches on it, are dmd_dist/mesh.py.

`initialize` must run before anything touches a device.  Modes (`[distributed] mode`):
- `local`: one process (its own real or simulated devices); nothing to initialize;
- `slurm`: `srun` tasks, detected from SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID,
  SLURM_LOCALID; the coordinator is the first node of the step;
- `mpi`: `mpirun`/`mpiexec` ranks (Open MPI, MPICH, Intel MPI) through mpi4py;
- explicit: `coordinator = "host:port"`, `num_processes`, `process_id` in the config;
- `auto` (default): slurm if its variables describe more than one task, mpi if an MPI launcher started
  more than one rank, else local.
`distributed.port` (or the environment's JAX_COORDINATOR_PORT) sets the coordinator port, to keep two
jobs on one node apart; in mpi mode without one, process 0 picks a free port and sends it to the others.
Process 0's coordination service (gRPC, no authentication) listens on the coordinator host's own address
rather than jax's default of every interface, where that is safe (`bind_address`; docs/cluster.md,
"Coordinator exposure").

A lost process (killed, its node gone): jax.distributed's heartbeats (`distributed.heartbeat_timeout`)
end every other process within that time; jax itself aborts them (SIGABRT, after its own "Terminating
process because the JAX distributed service detected fatal errors" line).  A collective that fails
first because a peer's connection dropped raises in Python instead: `peer_lost` recognises it and the
CLI exits at once with exit code 5 (EXIT_PEER_LOST) and one line naming the peer.

Processes reach their first collective at different times when their set-up differs in cost, e.g. when
process 0 loads its programs from the compilation cache and another compiles them (on CPU the cache key
holds the device, so only process 0's process-local programs are found).  XLA:CPU's collectives give up
when a peer is 30 s late, so `barrier` (the coordination service's, with a timeout of our choosing) lines
the processes up first.
"""

import ipaddress
import os
import re
import socket

import jax
import numpy as np

from dmd_dist.errors import InputError

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
EXIT_PEER_LOST = 5  # the CLI's exit code when another process of the run is gone (cli.py)
listening = None  # where process 0's coordination service listens (set by `initialize`, for the log)


def detect_mode(env=None):
    env = os.environ if env is None else env
    if all(v in env for v in SLURM_VARIABLES) and int(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if any(int(env.get(v, "1")) > 1 for v in MPI_SIZE_VARIABLES):
        return "mpi"
    return "local"


def initialize(dcfg):
    """Start jax.distributed as `[distributed]` says; returns the mode used."""
    global listening
    timeouts = {"heartbeat_timeout_seconds": dcfg.heartbeat_timeout}
    if dcfg.coordinator is not None:
        if dcfg.num_processes is None or dcfg.process_id is None:
            raise InputError("distributed.coordinator", "an explicit coordinator needs num_processes and process_id")
        if dcfg.process_id >= dcfg.num_processes:
            raise InputError("distributed.process_id", f"{dcfg.process_id} >= num_processes {dcfg.num_processes}")
        # Only a loopback coordinator proves that every process is on this node.
        bind = listening = bind_address(dcfg.coordinator, dcfg.bind, all_local=False)
        jax.distributed.initialize(coordinator_address=dcfg.coordinator, num_processes=dcfg.num_processes,
                                   process_id=dcfg.process_id, coordinator_bind_address=bind, **timeouts)
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
        from jax._src.clusters.slurm_cluster import SlurmCluster  # the address jax derives, to bind to it

        coordinator = SlurmCluster.get_coordinator_address(None, os.environ.get("JAX_COORDINATOR_PORT"))
        nodes = os.environ["SLURM_STEP_NODELIST"]
        one_node = os.environ.get("SLURM_STEP_NUM_NODES", "1" if not set(nodes) & set(",[") else "") == "1"
        listening = bind_address(coordinator, dcfg.bind, one_node)
        jax.distributed.initialize(cluster_detection_method="slurm", coordinator_bind_address=listening, **timeouts)
    else:
        if "OMPI_COMM_WORLD_SIZE" in os.environ and not {"MPI4PY_MPIABI", "MPI4PY_LIBMPI"} & set(os.environ):
            # Started by Open MPI's mpirun: mpi4py's wheel would load the first libmpi it finds (the dev
            # extra's MPICH, in .venv/lib) and abort in MPI_Init; ask for its Open MPI build instead.
            os.environ["MPI4PY_MPIABI"] = "openmpi"
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        if "JAX_COORDINATOR_PORT" not in os.environ:
            # jax's own default, a hash of the host name, is unknown here (hash randomisation), so process 0
            # picks a free port of its node: one per job, and known for the bind address.
            os.environ["JAX_COORDINATOR_PORT"] = str(comm.bcast(free_port() if comm.Get_rank() == 0 else None))
        # jax's Mpi4pyCluster names the coordinator by process 0's socket.gethostname(); only process 0 binds.
        coordinator = f"{socket.gethostname()}:{os.environ['JAX_COORDINATOR_PORT']}"
        one_node = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size() == comm.Get_size()
        listening = bind_address(coordinator, dcfg.bind, one_node)
        jax.distributed.initialize(cluster_detection_method="mpi4py", coordinator_bind_address=listening, **timeouts)
    return mode


def free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def bind_address(coordinator, bind="host", all_local=False):
    """Where process 0's coordination service listens (None: jax's default, `[::]:port`, every interface).

    `host`: `coordinator` itself, so that it accepts connections only on the address(es) its host name
    resolves to on process 0's node, which is where the other processes connect.  Not when that is a
    loopback address (e.g. Debian's `127.0.1.1 hostname` line in /etc/hosts) unless every process is on
    this node (`all_local`, or the coordinator is itself a loopback address): other nodes resolve the
    name to a real interface, which a loopback-only service would refuse.
    """
    if bind == "all":
        return None
    host, port = coordinator.rsplit(":", 1)
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):  # unresolvable: left to jax, whose connect names the address
        return None
    loopback = any(_is_loopback(i[4][0].split("%")[0]) for i in infos)
    if loopback and not (all_local or host == "localhost" or _is_loopback(host)):
        return None
    return coordinator


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return False


def barrier(name, timeout_s, setting="distributed.setup_timeout"):
    """Wait until every process has called `barrier(name, ...)`; not a device collective, so a process
    may be up to `timeout_s` late.  A no-op in one process."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client jax.distributed.initialize started; no public handle

    try:
        distributed.global_state.client.wait_at_barrier(f"dmd_dist/{name}", int(timeout_s * 1000))
    except jax.errors.JaxRuntimeError as e:
        lost = peer_lost(e)
        if lost is not None:
            raise lost from e
        raise RuntimeError(f"process {jax.process_index()}: not every process reached '{name}' within "
                           f"{timeout_s:g} s ({setting}); a process may have died or be stuck: {e}") from e


def any_process(flag):
    """True on every process if `flag` is true on any (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


# What a collective or the coordination service says when a peer process is gone: XLA:CPU's gloo
# collectives when the peer's connection drops, the service's heartbeat verdict.  (NCCL on GPUs does not
# fail; there the heartbeat timeout ends the process: jax aborts it.)
_LOST = re.compile(r"Gloo \w+ failed|Connection (reset|closed) by peer|heartbeat timeout|stopped sending heartbeats|"
                   r"Failed to send RPC to coordination service")
_TASKS = re.compile(r"Task (\d+) heartbeat timeout|stopped sending heartbeats\):\s*([\d,\s]+)")


class PeerLost(RuntimeError):
    """Another process of a multi-process run is gone: the run cannot go on (resume it from its last
    checkpoint with every process)."""


def peer_lost(error):
    """A PeerLost naming the lost process(es), if `error` (or its cause) says a peer is gone; else None."""
    if isinstance(error, PeerLost):
        return error
    if jax.process_count() == 1:
        return None
    found, e = None, error
    while e is not None:  # the innermost match: jax's own message, not a wrapper's
        if _LOST.search(str(e)):
            found = e
        e = e.__cause__ or e.__context__
    if found is None:
        return None
    text, me, n = str(found), jax.process_index(), jax.process_count()
    tasks = _TASKS.search(text)
    if tasks:
        ids = sorted({int(t) for t in re.findall(r"\d+", tasks.group(1) or tasks.group(2))} - {me})
        why = "no heartbeat within distributed.heartbeat_timeout"
    elif "coordination service" in text:
        ids, why = [0], "the coordination service on process 0 cannot be reached"
    else:  # a gloo pair names an address, not a process
        ids = [1 - me] if n == 2 else []
        reset = re.search(r"Connection (reset|closed) by peer", text)
        why = "a collective failed: " + (reset.group(0) if reset else text.strip().splitlines()[0][:120])
    who = f"process {', '.join(map(str, ids))}" if ids else "another process"
    return PeerLost(f"process {me} of {n}: lost {who} ({why}); it stopped or cannot be reached. The run can be "
                    "resumed from its last checkpoint: rerun the same command")
