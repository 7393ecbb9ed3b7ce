"""What every potential provides: energy and forces of a parameter pytree, and its neighbour list.

Parameters are a plain pytree of arrays (differentiable: `jax.grad`, the adjoint's custom VJP, `vmap`
and `shard_map` all see them as data).  The potential object itself is static configuration.

Contract: every geometric quantity a potential uses comes from `self.displacement(ra, rb)` (the
minimum-image vector).  That is what makes `virial` generic: straining space is straining displacements.
"""

import copy

import jax
import jax.numpy as jnp

from dmd_dist.neighbors import NeighborListFns


class Potential:
    """Base class. Subclasses implement `energy` and `default_params`, optionally faster `forces`."""

    neighbors: NeighborListFns
    displacement: callable

    def default_params(self):
        raise NotImplementedError

    def energy(self, params, positions, nbrs):
        """Total potential energy in kJ/mol."""
        raise NotImplementedError

    def forces(self, params, positions, nbrs):
        """Forces in kJ/(mol nm): -dE/dx by autodiff unless a subclass knows better."""
        return -jax.grad(self.energy, argnums=1)(params, positions, nbrs)

    def force_vjp(self, params, positions, nbrs):
        """(forces, vjp): `vjp(a)` gives (a . dF/dx, a . dF/dparams) for a cotangent a of shape (N, 3).

        What the reverse-time adjoint applies at every backward step.  By autodiff unless a subclass
        knows better (`ClassicalPotential` avoids the scatter that autodiff's transpose of the neighbour
        gather costs).
        """
        return jax.vjp(lambda x, p: self.forces(p, x, nbrs), positions, params)

    def virial(self, params, positions, nbrs):
        """Configurational virial tensor W_ab = -dU/d(eps_ab) at eps = 0, in kJ/mol.

        Every displacement d is strained to d (1 + eps), so for pair terms W = sum_pairs d (x) f, with f the
        pair force on the first atom, and the same derivative covers bonded terms and many-body networks
        without a per-potential formula.  Periodic images are handled because the strain acts on the
        minimum-image vectors, not on wrapped positions.  The pressure tensor is (sum m v v + W) / V.
        """
        unstrained = self.displacement

        def strained_energy(eps):
            strained = copy.copy(self)
            deform = jnp.eye(3, dtype=eps.dtype) + eps
            strained.displacement = lambda ra, rb: unstrained(ra, rb) @ deform
            return strained.energy(params, positions, nbrs)

        return -jax.grad(strained_energy)(jnp.zeros((3, 3), positions.dtype))
