"""What every potential provides: energy and forces of a parameter pytree, and its neighbour list.

Parameters are a plain pytree of arrays (differentiable: `jax.grad`, the adjoint's custom VJP, `vmap`
and `shard_map` all see them as data).  The potential object itself is static configuration.
"""

import jax

from dmd_dist.neighbors import NeighborListFns


class Potential:
    """Base class. Subclasses implement `energy` and `default_params`, optionally faster `forces`."""

    neighbors: NeighborListFns

    def default_params(self):
        raise NotImplementedError

    def energy(self, params, positions, nbrs):
        """Total potential energy in kJ/mol."""
        raise NotImplementedError

    def forces(self, params, positions, nbrs):
        """Forces in kJ/(mol nm): -dE/dx by autodiff unless a subclass knows better."""
        return -jax.grad(self.energy, argnums=1)(params, positions, nbrs)
