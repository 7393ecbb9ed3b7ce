"""The core repulsion (potentials/core.py): closest distances of data with known answers, the wall's energy
at known distances, zero (to the bit) where every pair is at least as far apart as the data's closest,
forces against finite differences, continuity at the radius, and its round trip through a checkpoint's meta."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist import neighbors, space
from dmd_dist.potentials.core import CoreRepulsion, closest_distances, core_from_data, pair_name
from dmd_dist.potentials.graph import NeighborGraph
from dmd_dist.potentials.mpnn import PRESETS, MPNNPotential

STRENGTH = 1e5
RADII = ((0.24, 0.09), (0.09, 0.13))  # (O-O, O-H), (H-O, H-H) nm
CORE = CoreRepulsion(RADII, STRENGTH)
BOX = 2.0


def test_closest_distances_per_pair_of_species_across_the_periodic_boundary():
    species = np.array([0, 1, 1, 0])
    frames = np.zeros((2, 4, 3))
    frames[0] = [[0.1, 0, 0], [0.5, 0, 0], [0.9, 0, 0], [1.95, 0, 0]]  # O0-O3 0.15 nm through the boundary
    frames[1] = [[0.1, 0, 0], [0.2, 0, 0], [1.0, 0, 0], [1.4, 0, 0]]  # O0-H1 0.1, H2-H1 0.8 > frame 0's 0.4
    closest = closest_distances(frames, np.full(3, BOX), species, 2)
    np.testing.assert_allclose(closest, [[0.15, 0.1], [0.1, 0.4]], atol=1e-12)
    core = core_from_data(frames, np.full(3, BOX), species, 3, 0.12, STRENGTH)  # a third species never seen
    np.testing.assert_allclose(core.radii, [[0.12, 0.1, 0], [0.1, 0.12, 0], [0, 0, 0]], atol=1e-12)  # 0: none


def _graph(x, cutoff=0.6):
    """Every other atom is a neighbour (a full list without padding)."""
    n = len(x)
    idx = jnp.asarray([[j for j in range(n) if j != i] for i in range(n)])
    return NeighborGraph(space.periodic(jnp.full(3, BOX)), x, idx, cutoff, pairs=False)


def test_wall_energy_at_known_distances():
    """O0-O1 at half the O-O radius: STRENGTH; O0-H2 at 3/4 of the O-H radius: STRENGTH / 27; O1-H2 and
    beyond: nothing.  Each atom holds half of each of its pairs."""
    x = jnp.asarray([[0.5, 0.5, 0.5], [0.62, 0.5, 0.5], [0.5, 0.5675, 0.5]])
    species = jnp.asarray([0, 0, 1])
    e = np.asarray(CORE.atom_energies(_graph(x), species))
    assert np.hypot(0.12, 0.0675) > 0.09  # O1-H2 outside the wall
    np.testing.assert_allclose(e, [0.5 * STRENGTH * (1 + 1 / 27), 0.5 * STRENGTH, 0.5 * STRENGTH / 27], rtol=1e-12)


@pytest.fixture(scope="module")
def water_like():
    """A network (cutoff 0.9 nm) on 10 atoms (O, H) of a 2 nm box, with and without the wall."""
    species = np.array([0, 1, 1, 0, 1, 1, 0, 1, 1, 0])
    disp = space.periodic(jnp.full(3, BOX))
    net = MPNNPotential(disp, neighbors.all_pairs(len(species)), species, 2,
                        dataclasses.replace(PRESETS["tiny"], cutoff=0.9, avg_neighbors=3.0), jax.random.PRNGKey(0))
    return net, net.with_core(CORE), net.default_params()


def _apart(seed):
    """10 atoms at least 0.5 nm apart: beyond every radius, also after one moves within 0.24 nm of another."""
    rng, points = np.random.default_rng(seed), []
    while len(points) < 10:
        p = rng.uniform(0.0, BOX, 3)
        if all(np.linalg.norm((p - q) - BOX * np.round((p - q) / BOX)) > 0.5 for q in points):
            points.append(p)
    return jnp.asarray(np.array(points))


def test_wall_adds_exactly_nothing_where_every_pair_is_beyond_its_radius(water_like):
    net, walled, params = water_like
    x = _apart(0)
    nbrs = net.neighbors.allocate(x)
    assert float(walled.energy(params, x, nbrs)) == float(net.energy(params, x, nbrs))
    np.testing.assert_array_equal(walled.forces(params, x, nbrs), net.forces(params, x, nbrs))
    assert net.with_core(None).core is None and walled.core is CORE and net.core is None


def test_wall_forces_match_finite_differences_and_vanish_continuously_at_the_radius(water_like):
    net, walled, params = water_like
    x = _apart(1)
    o0, o3 = 0, 3
    for fraction in (0.8, 0.999):  # O3 moved onto the line from O0 at a fraction of the O-O radius
        xc = x.at[o3].set(x[o0] + jnp.asarray([fraction * RADII[0][0], 0.0, 0.0]))
        nbrs = net.neighbors.allocate(xc)
        wall = float(walled.energy(params, xc, nbrs) - net.energy(params, xc, nbrs))
        np.testing.assert_allclose(wall, STRENGTH * (1 / fraction - 1) ** 3, rtol=1e-9)
        f = np.asarray(walled.forces(params, xc, nbrs) - net.forces(params, xc, nbrs))
        # -dE/dx of O3 along x: 3 c (r0/r - 1)^2 r0 / r^2, pushing it away from O0
        r0, r = RADII[0][0], fraction * RADII[0][0]
        np.testing.assert_allclose(f[o3, 0], 3 * STRENGTH * (r0 / r - 1) ** 2 * r0 / r**2, rtol=1e-9)
        np.testing.assert_allclose(f[o0, 0], -f[o3, 0], rtol=1e-12)
        h = 1e-6
        step = jnp.zeros_like(xc).at[o3, 0].set(h)
        fd = -(walled.energy(params, xc + step, nbrs) - walled.energy(params, xc - step, nbrs)) / (2 * h)
        # atol: the wall's third derivative jumps at r0, so the difference quotient's error there is ~1e-5
        np.testing.assert_allclose(walled.forces(params, xc, nbrs)[o3, 0], fd, rtol=1e-6, atol=1e-4)
    assert abs(wall) < 1e-3 and abs(f[o3, 0]) < 1e2  # at 0.999 r0: 1e-4 kJ/mol, 0.3 kJ/mol/nm


def test_meta_round_trip_by_species_name():
    meta = CORE.to_meta(["O", "H"])
    assert meta == {"strength": STRENGTH, "radii": {"O-O": 0.24, "H-O": 0.09, "H-H": 0.13}}
    assert pair_name("O", "H") == pair_name("H", "O") == "H-O"
    assert CoreRepulsion.from_meta(meta, ["O", "H"]) == CORE
    assert CoreRepulsion.from_meta(meta, ["H", "O"]).radii == ((0.13, 0.09), (0.09, 0.24))
    assert CoreRepulsion.from_meta(meta, ["H", "Ar"]).radii == ((0.13, 0.0), (0.0, 0.0))


def test_second_derivatives_finite_where_a_pair_of_species_has_no_wall(water_like):
    """A pair of species the data never held gets radius 0: the wall's force VJP (what the adjoint applies)
    stays finite for every atom, also next to such pairs."""
    net, _, params = water_like
    walled = net.with_core(CoreRepulsion(((0.24, 0.0), (0.0, 0.0)), STRENGTH))
    x = _apart(2)
    x = x.at[3].set(x[0] + jnp.asarray([0.2, 0.0, 0.0]))  # one O-O pair inside its wall
    nbrs = net.neighbors.allocate(x)
    forces, vjp = walled.force_vjp(params, x, nbrs)
    a = jnp.asarray(np.random.default_rng(0).normal(size=x.shape))
    dx, dparams = vjp(a)
    assert np.isfinite(np.asarray(forces)).all() and np.isfinite(np.asarray(dx)).all()
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(dparams))
    assert float(jnp.abs(forces - net.forces(params, x, nbrs)).max()) > 1.0  # the wall acts
