"""Static observables: mass and number density, radial distribution functions (histogram and smooth).

Units: positions and box edges in nm, masses in amu; mass density in g/cm^3 (converted with
`units.AMU_PER_NM3_TO_G_PER_CM3`, the same constant as `System.density`), number density in nm^-3; r in
nm and g(r) dimensionless.

g(r) is for an orthorhombic periodic box with minimum-image distances, so r_max may not exceed half the
shortest box edge (beyond it the minimum image misses pairs and shells are incomplete).  Every function
takes one frame (N, 3) or a batch of frames (F, N, 3) and averages g(r) over the frames; the box may be
one (3,) or one per frame (F, 3) (NPT).  The histogram is jittable (with `r_max` and `n_bins` static)
but piecewise constant in the positions, so its gradient is zero; `radial_distribution_smooth` spreads
each pair over the bins with a Gaussian of width `width` and is differentiable, for RDF targets.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist.space import periodic, safe_norm
from dmd_dist.units import AMU_PER_NM3_TO_G_PER_CM3


def volume(box):
    """Volume (nm^3) of an orthorhombic box of edges `box` (nm, (..., 3))."""
    return jnp.prod(jnp.asarray(box), axis=-1)


def density(masses, box):
    """Mass density in g/cm^3 of atoms of `masses` (amu, (..., N)) in a box of edges `box` (nm, (..., 3)).

    Leading axes broadcast (e.g. NPT frames with one box each); differentiable in the box.
    """
    return jnp.sum(jnp.asarray(masses), axis=-1) / volume(box) * AMU_PER_NM3_TO_G_PER_CM3


def number_density(n_atoms, box):
    """Number density in nm^-3 of `n_atoms` atoms in a box of edges `box` (nm, (..., 3))."""
    return n_atoms / volume(box)


def bin_edges(r_max, n_bins):
    """The n_bins + 1 edges (nm) of equal bins on [0, r_max] used by the RDF functions."""
    return jnp.linspace(0.0, r_max, n_bins + 1)


def _check_range(box, r_max, n_bins):
    """ValueError for a bad grid; for a concrete box also when r_max exceeds half its shortest edge.

    Under jit with a traced box the edge check cannot run (there is no value to compare); call the
    function once outside jit, or check the box yourself, when the box changes (NPT).
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if not r_max > 0:
        raise ValueError(f"r_max must be positive, got {r_max!r}")
    try:
        edges = np.asarray(box, float)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    half = 0.5 * float(np.min(edges))
    # Relative slack so that r_max = L/2 computed in another precision is still accepted.
    if r_max > half * (1.0 + 1e-12):
        raise ValueError(f"r_max = {r_max} nm exceeds half the shortest box edge ({half} nm): the "
                         "minimum-image convention would miss pairs beyond it")


def _frames(positions, box):
    """(F, N, 3) positions and (F, 3) boxes from one frame or a batch."""
    positions = jnp.asarray(positions)
    if positions.ndim not in (2, 3) or positions.shape[-1] != 3:
        raise ValueError(f"positions must have shape (N, 3) or (F, N, 3), got {positions.shape}")
    if positions.ndim == 2:
        positions = positions[None]
    box = jnp.broadcast_to(jnp.asarray(box, positions.dtype), (positions.shape[0], 3))
    return positions, box


def _pair_weights(n, mask_a, mask_b, dtype):
    """(N, N) weights a_i b_j (0 on the diagonal) and the number of ordered pairs they count.

    The count is N_a N_b - |A and B|: a pair of one atom with itself is not a pair, so g_AA is
    normalised by N_a (N_a - 1) and an ideal gas gives g = 1 exactly on average even for small N.
    """
    a = jnp.ones(n, dtype) if mask_a is None else jnp.asarray(mask_a).astype(dtype)
    b = a if mask_b is None else jnp.asarray(mask_b).astype(dtype)
    if a.shape != (n,) or b.shape != (n,):
        raise ValueError(f"species masks must have shape ({n},), got {a.shape} and {b.shape}")
    w = a[:, None] * b[None, :] * (1.0 - jnp.eye(n, dtype=dtype))
    return w, jnp.sum(a) * jnp.sum(b) - jnp.sum(a * b)


def _distances(x, box, weights):
    """Minimum-image distances (N, N), with finite derivatives where a pair is not counted."""
    displacement = periodic(box)
    d = displacement(x[:, None, :], x[None, :, :])
    return safe_norm(d, weights > 0)


def _shells(r_max, n_bins, dtype):
    edges = bin_edges(r_max, n_bins).astype(dtype)
    # Exact shell volumes rather than 4 pi r^2 dr: no O(dr^2) bias in the first bins.
    shell = (4.0 * math.pi / 3.0) * (edges[1:] ** 3 - edges[:-1] ** 3)
    return edges, 0.5 * (edges[1:] + edges[:-1]), shell


def _rdf(frame_counts, positions, box, r_max, n_bins, mask_a, mask_b, remat=False):
    """Shared driver: per-frame pair counts per bin -> g(r) averaged over frames."""
    _check_range(box, r_max, n_bins)
    positions, box = _frames(positions, box)
    dtype = positions.dtype
    edges, centres, shell = _shells(r_max, n_bins, dtype)
    weights, n_pairs = _pair_weights(positions.shape[1], mask_a, mask_b, dtype)

    def one(frame):
        x, b = frame
        counts = frame_counts(_distances(x, b, weights), weights, edges)
        # Ideal-gas count in each shell: n_pairs / V * shell volume.
        return counts / (n_pairs / volume(b) * shell)

    # Recompute each frame on the backward pass (smooth variant): the per-frame intermediates are
    # N^2 x n_bins, far too many to keep for every frame.
    body = jax.checkpoint(one) if remat else one
    g = jax.lax.map(body, (positions, box))
    return centres, jnp.mean(g, axis=0)


def _histogram_counts(r, weights, edges):
    n_bins = edges.shape[0] - 1
    dr = edges[-1] / n_bins
    inside = (weights > 0) & (r < edges[-1])
    # minimum(): r just below r_max may round to index n_bins.
    k = jnp.where(inside, jnp.minimum(jnp.floor(r / dr).astype(jnp.int32), n_bins - 1), n_bins)
    return jnp.zeros(n_bins, r.dtype).at[k.ravel()].add(jnp.where(inside, weights, 0.0).ravel(), mode="drop")


def radial_distribution(positions, box, r_max, n_bins, mask_a=None, mask_b=None):
    """Radial distribution function g_AB(r) by histogram, averaged over frames.

    positions: (N, 3) or (F, N, 3) nm.  box: (3,) or (F, 3) nm, orthorhombic, periodic.
    r_max (nm, <= half the shortest box edge, else ValueError) and n_bins: the grid, static under jit.
    mask_a, mask_b: (N,) booleans selecting species A and B (e.g. `topology.species == 0`); mask_a None
    means all atoms, mask_b None means the same set as A.
    Returns (r, g): the n_bins bin centres (nm) and g(r), normalised per frame by the ideal-gas count
    (N_a N_b - N_{A and B}) / V times the exact shell volume 4/3 pi (r_hi^3 - r_lo^3).
    Not differentiable in the positions (use `radial_distribution_smooth`).
    """
    return _rdf(_histogram_counts, positions, box, r_max, n_bins, mask_a, mask_b)


def radial_distribution_smooth(positions, box, r_max, n_bins, width, mask_a=None, mask_b=None):
    """Differentiable g_AB(r): each pair distance is a Gaussian of standard deviation `width` (nm),
    and each bin receives the Gaussian's mass inside it (a difference of error functions at its edges).

    Same arguments, normalisation and return value as `radial_distribution`.  As width -> 0 it tends to
    the histogram; for any width the total over the bins equals the histogram's except for the Gaussian
    tails of pairs within a few widths of r = 0 or r_max (so coordination numbers up to a cut between
    shells agree).  Cost O(F N^2 n_bins) error functions; frames are recomputed on the backward pass.
    """
    if not width > 0:
        raise ValueError(f"width must be positive, got {width!r}")
    scale = 1.0 / (math.sqrt(2.0) * width)

    def counts(r, weights, edges):
        # Weighted number of pairs below each edge, sum_ij w_ij Phi((e - r_ij) / width), up to the
        # constant 1/2 that cancels in the differences.
        below = jax.vmap(lambda e: jnp.sum(weights * jax.lax.erf((e - r) * scale)))(edges)
        return 0.5 * (below[1:] - below[:-1])

    return _rdf(counts, positions, box, r_max, n_bins, mask_a, mask_b, remat=True)


def coordination_number(r, g, pair_density, r_cut):
    """Mean number of B neighbours of an A atom closer than r_cut: sum of pair_density g(r) over the
    shells of the bins whose centre lies below r_cut (choose r_cut between shells, at a bin edge).

    r, g: as returned by the RDF functions (uniform bins starting at 0).  pair_density (nm^-3): the
    density the normalisation used, (N_a N_b - N_{A and B}) / (N_a V); for A = B that is (N - 1) / V
    (using N / V instead overcounts by N / (N - 1)).
    """
    dr = 2.0 * r[0]  # centres of bins [0, dr), [dr, 2 dr), ...
    shell = (4.0 * math.pi / 3.0) * ((r + 0.5 * dr) ** 3 - (r - 0.5 * dr) ** 3)
    return pair_density * jnp.sum(jnp.where(r < r_cut, g * shell, 0.0))
