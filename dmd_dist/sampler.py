"""Replica Langevin chains that provide start frames (never differentiated).

Replica r draws its initial velocities and all its noise from fold_in(key, r) (its *global* index), so a
replica's chain is the same whichever device or process runs it and however replicas are batched.
"""

import jax
import jax.numpy as jnp

from dmd_dist import integrators
from dmd_dist.driver import run_checked, scan_steps
from dmd_dist.mesh import per_device
from dmd_dist.systems.system import maxwell_boltzmann


def langevin_sampler(system, potential, dt, temperature, friction):
    """The BAOAB NVT integrator of the replica chains (centre-of-mass velocity removed)."""
    return integrators.langevin_baoab(integrators.Dynamics(potential, system.masses), dt, temperature, friction)


def replica_keys(key, count, offset=0):
    """Key of each replica from its global index offset..offset+count-1."""
    return jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(offset, offset + count))


def init_chains(nvt, system, potential, params, key, count, temperatures, offset=0):
    """Batched NVT states of replicas offset..offset+count-1 for the integrator `nvt`, all starting from
    `system`'s positions with their own Maxwell-Boltzmann velocities at `temperatures` (K: one per chain,
    or one for all).  The state does not hold the temperature: the integrator that steps it does."""
    k_vel, k_chain = jax.vmap(jax.random.split, out_axes=1)(replica_keys(key, count, offset))
    positions = jnp.broadcast_to(system.positions, (count,) + system.positions.shape)
    temperatures = jnp.broadcast_to(jnp.asarray(temperatures, system.positions.dtype), (count,))
    velocities = jax.vmap(lambda k, t: maxwell_boltzmann(k, system.masses, t))(k_vel, temperatures)
    nbrs = potential.neighbors.allocate(positions)
    # jit: one program instead of a few hundred op-by-op compilations of the first force (seconds per command)
    return jax.jit(jax.vmap(nvt.init, (None, 0, 0, 0, 0)))(params, positions, velocities, nbrs, k_chain)


def advance(nvt, potential, params, states, n_steps, counter, capacity_factor, mesh=None, relist=None):
    """Run every chain `n_steps` steps of `nvt` (answering neighbour-list overflows): vmapped on one device,
    or with `mesh` on each device's own replicas (`states` sharded over it, `relist` re-allocating their
    lists: mesh.py).  `params` is an argument of the compiled program, not a constant of it."""
    if n_steps == 0:
        return states

    def chain(p, s):
        return scan_steps(nvt.step, p, s, n_steps)[0]

    run = jax.jit(jax.vmap(chain, (None, 0))) if mesh is None else per_device(chain, mesh)
    return run_checked(lambda s: (run(params, s), None), states, potential.neighbors, counter, capacity_factor,
                       relist=relist)[0]
