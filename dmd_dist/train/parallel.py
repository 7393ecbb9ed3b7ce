"""Replicas over devices: a 1-D mesh named `replica` over every device, and placing replica batches on it.

One process with several (real or simulated) devices for now; the multi-process launch adds
`jax.distributed.initialize` before anything touches a device, and the same mesh then spans all
processes' devices.
"""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dmd_dist.errors import InputError

AXIS = "replica"


def replica_mesh(devices=None):
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def check_replica_count(count, mesh):
    n = mesh.devices.size
    if count % n:
        raise InputError("replicas.count", f"{count} replicas cannot be shared evenly by {n} devices; use a "
                                           f"multiple of {n}")


def shard_replicas(tree, mesh):
    """Every array's leading (replica) axis split over the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P(AXIS)))


def replicate(tree, mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))
