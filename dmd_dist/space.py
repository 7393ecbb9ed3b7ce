"""Periodic boundaries for an orthorhombic box, as a pair of pure functions (JAX MD style).

Positions are kept *unwrapped* by default: the minimum-image displacement makes forces independent of
wrapping, unwrapped coordinates give mean-squared displacements directly, and the time-reversed
integration needs no bookkeeping of box crossings.  `wrap_atoms` / `wrap_molecules` exist for output
and for integrators that are asked to wrap.
"""

import jax
import jax.numpy as jnp


def periodic(box):
    """Return `(displacement, shift)` for an orthorhombic box of edge lengths `box` (nm).

    `displacement(ra, rb)` is the minimum-image vector ra - rb (broadcasting over leading axes);
    `shift(r, dr)` moves positions by dr without wrapping.
    """
    box = jnp.asarray(box)

    def displacement(ra, rb):
        d = ra - rb
        return d - box * jnp.round(d / box)

    def shift(r, dr):
        return r + dr

    return displacement, shift


def free():
    """Open boundaries: plain differences (molecules in vacuum, tests)."""

    def displacement(ra, rb):
        return ra - rb

    def shift(r, dr):
        return r + dr

    return displacement, shift


def safe_norm(d, mask):
    """|d| along the last axis, with a finite value *and finite derivatives* where `mask` is False.

    The double `where` keeps the square root away from zero for padded or coincident pairs, so that
    forces and their VJPs (second derivatives of the energy) never turn NaN.
    """
    r2 = jnp.sum(d * d, axis=-1)
    r2 = jnp.where(mask, r2, 1.0)
    return jnp.where(mask, jnp.sqrt(r2), 0.0)


def wrap_atoms(positions, box):
    """Put every atom into [0, box)."""
    return positions - box * jnp.floor(positions / box)


def wrap_molecules(positions, box, molecule, masses, n_molecules):
    """Shift whole molecules by lattice vectors so that each molecule's centre of mass is in [0, box).

    Molecules must be whole in `positions` (true when only this function ever wraps them).
    """
    mass_sum = jax.ops.segment_sum(masses, molecule, n_molecules)
    centre = jax.ops.segment_sum(masses[:, None] * positions, molecule, n_molecules) / mass_sum[:, None]
    shift = box * jnp.floor(centre / box)
    return positions - shift[molecule]
