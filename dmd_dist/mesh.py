"""The replica mesh: one axis, `replica`, over devices (every device of every process in `train`, the
process's own in `simulate`), and replica batches placed on it: global arrays from each process's rows
and back, parameters replicated, per-device programs.  Process start-up and barriers are
train/parallel.py.
"""

import dataclasses

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dmd_dist.errors import InputError

AXIS = "replica"


def replica_mesh(devices=None):
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def sharing_devices(count, devices=None):
    """The first d of `devices` (default: this process's), d the most of them that share `count` replicas
    evenly: where a command that refuses no replica count (`simulate`) runs them."""
    devices = jax.local_devices() if devices is None else devices
    return devices[:max(d for d in range(1, len(devices) + 1) if count % d == 0)]


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
    return _global(tree, NamedSharding(mesh, P(AXIS)))


def process_local(a):
    """This process's rows (leading replica axis) of a replica-sharded global array, as numpy, in order."""
    rows = {s.index[0].start or 0: s.data for s in a.addressable_shards}  # replicated: one entry
    return np.concatenate([np.asarray(rows[k]) for k in sorted(rows)])


def replicate(tree, mesh):
    """The same value on every device of every process (every process passes the same value)."""
    return _global(tree, NamedSharding(mesh, P()))


def _global(tree, sharding):
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


def per_device(step, mesh):
    """jit of `step(params, state)` over a batch of replica states sharded over the mesh, run as a vmap on
    each device's own replicas: the neighbour list's all-replicas rebuild decision then spans one device,
    not an all-reduce over every device at every step.  (Rebuild timing does not change forces: pairs
    beyond the cutoff contribute exact zeros, so results stay independent of the layout.)  The parameters
    are an argument, not constants of the program: a model with other values loads it from the compilation
    cache."""
    return jax.jit(jax.shard_map(jax.vmap(step, (None, 0)), mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS),
                                 check_vma=False))


def relister(neighbors, mesh):
    """relist(state, capacity): `state` (replica-sharded; leading axes replica[, frame]) with new lists of
    `capacity` from `neighbors` (NeighborListFns), allocated from this process's replicas (it cannot read
    the others') and made global again."""
    def relist(state, capacity):
        x = process_local(state.position)
        flat = neighbors.allocate(x.reshape((-1,) + x.shape[-2:]), capacity=capacity)
        nbrs = jax.tree.map(lambda a: np.asarray(a).reshape(x.shape[:-2] + a.shape[1:]), flat)
        return dataclasses.replace(state, neighbors=from_process_local(nbrs, mesh))
    return relist
