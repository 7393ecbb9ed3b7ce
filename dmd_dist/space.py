"""Periodic boundaries for an orthorhombic box: displacement functions (JAX MD style) and wrapping.

Positions are kept *unwrapped* by default: the minimum-image displacement makes forces independent of
wrapping, unwrapped coordinates give mean-squared displacements directly, and the time-reversed
integration needs no bookkeeping of box crossings.  `wrap_atoms` / `wrap_molecules` exist for output
and for integrators that are asked to wrap.
"""

import jax
import jax.numpy as jnp
import numpy as np


def minimum_image(d, box):
    """The periodic image of displacement(s) `d` nearest to zero (numpy or JAX arrays alike)."""
    return d - box * (d / box).round()


def periodic(box):
    """`displacement(ra, rb)`: the minimum-image vector ra - rb in an orthorhombic box of edge lengths `box`
    (nm), broadcasting over leading axes."""
    box = jnp.asarray(box)
    return lambda ra, rb: minimum_image(ra - rb, box)


def free():
    """Open boundaries: plain differences (molecules in vacuum, tests)."""
    return lambda ra, rb: ra - rb


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


def whole_molecules(positions, molecule, box=None):
    """Positions with every atom at the minimum image relative to its molecule's first atom (unchanged if
    `box` is None).  `molecule` is the topology's static per-atom molecule index; numpy or JAX positions."""
    molecule = np.asarray(molecule)
    first = np.full(molecule.max(initial=-1) + 1, len(molecule))
    np.minimum.at(first, molecule, np.arange(len(molecule)))
    anchor = positions[first[molecule]]
    return anchor + (positions - anchor if box is None else minimum_image(positions - anchor, box))
