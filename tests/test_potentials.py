"""Every force against -dE/dx by central finite differences, explicit pair forces against autodiff,
Lennard-Jones against ASE's calculator, and analytic values of each term."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist import neighbors, potentials, space
from dmd_dist.potentials.classical import (ClassicalPotential, damped_shifted_force_coulomb, harmonic_angles,
                                           harmonic_bonds, lennard_jones, morse)
from dmd_dist.systems import make_system
from dmd_dist.units import COULOMB


def finite_difference_forces(potential, params, x, nbrs, coords, h=1e-5):
    e = jax.jit(potential.energy)
    out = []
    for atom, axis in coords:
        xp = x.at[atom, axis].add(h)
        xm = x.at[atom, axis].add(-h)
        out.append(-(e(params, xp, nbrs) - e(params, xm, nbrs)) / (2 * h))
    return np.array(out)


def check_forces(potential, params, x, n_coords=12, seed=0, rtol=1e-6):
    nbrs = potential.neighbors.allocate(x)
    f = np.asarray(jax.jit(potential.forces)(params, x, nbrs))
    f_auto = np.asarray(-jax.grad(potential.energy, argnums=1)(params, x, nbrs))
    scale = np.max(np.abs(f_auto))
    np.testing.assert_allclose(f, f_auto, atol=1e-11 * scale)
    rng = np.random.default_rng(seed)
    coords = [(int(a), int(k)) for a, k in zip(rng.integers(0, x.shape[0], n_coords), rng.integers(0, 3, n_coords))]
    fd = finite_difference_forces(potential, params, x, nbrs, coords)
    np.testing.assert_allclose(np.array([f[a, k] for a, k in coords]), fd, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("shift, onset", [(False, None), (True, None), (False, 0.9)])
def test_lennard_jones_forces(argon, shift, onset):
    s, _, _ = argon
    pot, params = potentials.lennard_jones_potential(s, 0.3405, 0.996, cutoff=1.0, shift=shift, switch_onset=onset,
                                                     neighbor_mode="list")
    check_forces(pot, params, s.positions)


def check_force_vjp(potential, params, x, seed=0):
    """`force_vjp` (what the reverse-time adjoint applies every backward step) against autodiff's VJP of
    `forces`, for a random cotangent: forces, position and parameter parts."""
    from dmd_dist.potentials.base import Potential

    nbrs = potential.neighbors.allocate(x)
    a = jax.random.normal(jax.random.PRNGKey(seed), x.shape, x.dtype)
    f, back = potential.force_vjp(params, x, nbrs)
    f_ref, back_ref = Potential.force_vjp(potential, params, x, nbrs)
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-12 * np.max(np.abs(f_ref)))
    np.testing.assert_array_equal(f, potential.forces(params, x, nbrs))  # the forward's forces, bit for bit
    (g_x, g_p), (r_x, r_p) = back(a), back_ref(a)
    np.testing.assert_allclose(g_x, r_x, rtol=0, atol=1e-12 * np.max(np.abs(r_x)))
    leaves, ref_leaves = jax.tree.leaves(g_p), jax.tree.leaves(r_p)
    assert jax.tree.structure(g_p) == jax.tree.structure(r_p)
    assert any(np.any(np.asarray(r) != 0) for r in ref_leaves)
    for g, r in zip(leaves, ref_leaves):
        np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-12 * max(np.max(np.abs(r)), 1e-300))


@pytest.mark.parametrize("neighbor_mode, onset", [("list", None), ("list", 0.9), ("dense", None)])
def test_lennard_jones_force_vjp_is_autodiffs(argon, neighbor_mode, onset):
    s, _, _ = argon
    pot, params = potentials.lennard_jones_potential(s, 0.3405, 0.996, cutoff=1.0, switch_onset=onset,
                                                     neighbor_mode=neighbor_mode)
    check_force_vjp(pot, params, s.positions)


def test_water_force_vjp_is_autodiffs_with_species_exclusions_bonds_angles_and_coulomb(water):
    s, pot, params = water
    check_force_vjp(pot, params, s.positions, seed=1)


def test_two_species_lennard_jones_force_vjp_is_autodiffs():
    """Per-species sigma and epsilon (Lorentz-Berthelot): every species' parameter gets its own gradient."""
    grid = np.stack(np.meshgrid(*[np.arange(4) * 0.4] * 3, indexing="ij"), -1).reshape(-1, 3)
    x = grid + 0.03 * np.random.default_rng(3).standard_normal(grid.shape)
    s = make_system(jnp.asarray(x), np.full(64, 20.0), 1.6, np.arange(64) % 2, ("A", "B"))
    pot = ClassicalPotential(space.periodic(s.box), neighbors.all_pairs(64), s.topology.species,
                             [lennard_jones(np.array([0.2, 0.25]), np.array([0.8, 1.2]), cutoff=0.75, switch_onset=0.6)])
    check_force_vjp(pot, pot.default_params(), s.positions, seed=2)


def test_switch_is_one_below_onset_zero_at_cutoff_and_c2():
    from dmd_dist.potentials.classical import smooth_switch

    r = jnp.array([0.5, 0.9, 1.0, 1.1])
    np.testing.assert_allclose(smooth_switch(r, 0.9, 1.0), [1.0, 1.0, 0.0, 0.0])
    d1 = jax.vmap(jax.grad(lambda x: smooth_switch(x, 0.9, 1.0)))
    d2 = jax.vmap(jax.grad(jax.grad(lambda x: smooth_switch(x, 0.9, 1.0))))
    ends = jnp.array([0.9 + 1e-9, 1.0 - 1e-9])
    np.testing.assert_allclose(d1(ends), 0.0, atol=1e-6)
    np.testing.assert_allclose(d2(ends), 0.0, atol=1e-3)


def test_morse_forces(argon):
    s, _, _ = argon
    pot, params = potentials.morse_potential(s, depth=1.0, alpha=15.0, r0=0.38, cutoff=1.0, shift=True)
    check_forces(pot, params, s.positions)


def test_water_forces_bonds_angles_coulomb(water):
    s, pot, params = water
    check_forces(pot, params, s.positions, n_coords=18)


def test_water_parameter_gradient_is_finite_and_matches_finite_differences(water):
    """SPC/Fw's H has no LJ well (epsilon 0): sqrt(eps_O eps_H) has an infinite slope there, which once made
    every parameter gradient NaN and silently froze IR refinement.  Its gradient is now 0, the others FD."""
    from dmd_dist.params import flatten, perturb

    s, pot, params = water
    x = s.positions
    nbrs = pot.neighbors.allocate(x)
    e = jax.jit(pot.energy)
    grad = flatten(jax.grad(pot.energy)(params, x, nbrs), ("O", "H"))
    assert all(np.isfinite(v) for v in grad.values()), grad
    assert grad["lj.epsilon[H]"] == 0.0
    for name, h in (("bond.k", 1.0), ("angle.theta0", 1e-6), ("lj.epsilon[O]", 1e-6), ("coulomb.charge[H]", 1e-7)):
        fd = (e(perturb(params, name, h, ("O", "H")), x, nbrs) - e(perturb(params, name, -h, ("O", "H")), x, nbrs)) / (2 * h)
        assert grad[name] == pytest.approx(float(fd), rel=1e-6), name


def test_dense_and_list_paths_agree(argon):
    s, pot, params = argon
    dense, _ = potentials.lennard_jones_potential(s, 0.3405, 0.996, cutoff=1.0, neighbor_mode="dense")
    x = s.positions
    e_list = pot.energy(params, x, pot.neighbors.allocate(x))
    e_dense = dense.energy(params, x, dense.neighbors.allocate(x))
    np.testing.assert_allclose(e_list, e_dense, rtol=1e-12)


def test_lennard_jones_matches_ase(argon):
    from ase import Atoms
    from ase import units as u
    from ase.calculators.lj import LennardJones

    s, _, _ = argon
    sigma, eps, rc = 0.3405, 0.996, 1.0
    pot, params = potentials.lennard_jones_potential(s, sigma, eps, cutoff=rc, shift=True, neighbor_mode="list")
    x = s.positions
    nbrs = pot.neighbors.allocate(x)
    kj_per_ev = u.eV / (u.kJ / u.mol)
    atoms = Atoms("Ar%d" % s.n_atoms, positions=np.asarray(x) * 10, cell=np.asarray(s.box) * 10, pbc=True)
    atoms.calc = LennardJones(sigma=sigma * 10, epsilon=eps / kj_per_ev, rc=rc * 10, smooth=False)
    e_ase = atoms.get_potential_energy() * kj_per_ev
    f_ase = atoms.get_forces() * kj_per_ev * 10  # eV/A -> kJ/mol/nm
    np.testing.assert_allclose(pot.energy(params, x, nbrs), e_ase, rtol=1e-10)
    np.testing.assert_allclose(pot.forces(params, x, nbrs), f_ase, rtol=1e-8, atol=1e-8 * np.abs(f_ase).max())


def two_atoms(r, species=(0, 1), names=("A", "B"), box=5.0):
    x = jnp.array([[1.0, 1.0, 1.0], [1.0 + r, 1.0, 1.0]])
    return make_system(x, [1.0, 1.0], box, species, names), x


def pair_potential(system, term):
    disp = space.periodic(system.box)
    return ClassicalPotential(disp, neighbors.all_pairs(system.n_atoms), system.topology.species, [term])


def test_lennard_jones_analytic_minimum_and_mixing():
    s, x = two_atoms(2 ** (1 / 6) * 0.3)
    term = lennard_jones(np.array([0.2, 0.4]), np.array([1.0, 4.0]), cutoff=2.0)  # sigma_ij 0.3, eps_ij 2
    pot = pair_potential(s, term)
    nbrs = pot.neighbors.allocate(x)
    np.testing.assert_allclose(pot.energy(pot.default_params(), x, nbrs), -2.0, rtol=1e-12)
    np.testing.assert_allclose(pot.forces(pot.default_params(), x, nbrs), 0.0, atol=1e-10)


def test_morse_analytic_minimum():
    s, x = two_atoms(0.3)
    pot = pair_potential(s, morse(1.5, 20.0, 0.3, cutoff=2.0))
    nbrs = pot.neighbors.allocate(x)
    np.testing.assert_allclose(pot.energy(pot.default_params(), x, nbrs), -1.5, rtol=1e-12)
    np.testing.assert_allclose(pot.forces(pot.default_params(), x, nbrs), 0.0, atol=1e-10)


def test_dsf_coulomb_value_and_vanishing_energy_and_force_at_cutoff():
    alpha, rc, q = 2.0, 1.0, np.array([1.0, -0.5])
    term = damped_shifted_force_coulomb(q, rc, alpha)
    p = term.default_params
    r = 0.37
    fs = math.erfc(alpha * rc) / rc**2 + 2 * alpha / math.sqrt(math.pi) * math.exp(-(alpha * rc) ** 2) / rc
    expected = COULOMB * -0.5 * (math.erfc(alpha * r) / r - math.erfc(alpha * rc) / rc + fs * (r - rc))
    np.testing.assert_allclose(term.pair_energy(p, jnp.array(r), 0, 1), expected, rtol=1e-12)
    e_at_rc, de_at_rc = jax.value_and_grad(lambda r: term.pair_energy(p, r, 0, 1))(jnp.array(rc))
    assert abs(e_at_rc) < 1e-12 and abs(de_at_rc) < 1e-10
    s, x = two_atoms(r)
    pot = pair_potential(s, term)
    e = pot.energy(pot.default_params(), x, pot.neighbors.allocate(x))
    self_e = -COULOMB * (0.5 * math.erfc(alpha * rc) / rc + alpha / math.sqrt(math.pi)) * np.sum(q**2)
    np.testing.assert_allclose(e, expected + self_e, rtol=1e-12)


def test_harmonic_bond_and_angle_analytic():
    x = jnp.array([[0.0, 0.0, 0.0], [0.12, 0.0, 0.0], [0.0, 0.1, 0.0]])
    s = make_system(x, [16.0, 1.0, 1.0], 3.0, [0, 1, 1], ("O", "H"), [0, 0, 0], [[0, 1], [0, 2]], [[1, 0, 2]])
    disp = space.periodic(s.box)
    pot = ClassicalPotential(disp, neighbors.all_pairs(3), s.topology.species, [],
                             [harmonic_bonds(s.topology.bonds, 1000.0, 0.1), harmonic_angles(s.topology.angles, 50.0, 1.5)])
    e = pot.energy(pot.default_params(), x, None)
    np.testing.assert_allclose(e, 0.5 * 1000 * 0.02**2 + 0.5 * 50 * (math.pi / 2 - 1.5) ** 2, rtol=1e-12)
    check_forces(pot, pot.default_params(), x + 0.01 * jnp.arange(9.0).reshape(3, 3) / 9, n_coords=9)


def test_forces_are_finite_with_coincident_padded_pairs(argon):
    """Padded slots point at atom N-1 after clamping; second derivatives there must not be NaN."""
    s, pot, params = argon
    x = s.positions
    nbrs = pot.neighbors.allocate(x)
    v = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    _, hvp = jax.jvp(lambda y: pot.forces(params, y, nbrs), (x,), (v,))
    g = jax.grad(lambda p: jnp.sum(pot.forces(p, x, nbrs) ** 2))(params)
    assert np.all(np.isfinite(hvp)) and all(np.all(np.isfinite(a)) for a in jax.tree.leaves(g))


def test_virial_matches_ase_stress_including_shear(argon):
    """ASE's Lennard-Jones stress is (1/V) dE/d(strain) (virial only): W = -V * stress, all six components."""
    from ase import Atoms
    from ase import units as u
    from ase.calculators.lj import LennardJones

    s, _, _ = argon
    pot, params = potentials.lennard_jones_potential(s, 0.3405, 0.996, cutoff=1.0, shift=True, neighbor_mode="list")
    x = s.positions
    w = np.asarray(jax.jit(pot.virial)(params, x, pot.neighbors.allocate(x)))
    atoms = Atoms("Ar%d" % s.n_atoms, positions=np.asarray(x) * 10, cell=np.asarray(s.box) * 10, pbc=True)
    atoms.calc = LennardJones(sigma=3.405, epsilon=0.996 / (u.eV / (u.kJ / u.mol)), rc=10.0, smooth=False)
    stress = atoms.get_stress(voigt=False) * (u.eV / (u.kJ / u.mol)) * 1e3  # eV/A^3 -> kJ/mol/nm^3
    np.testing.assert_allclose(w, -s.volume * stress, rtol=1e-9, atol=1e-9 * np.abs(w).max())
    assert np.abs(w - w.T).max() < 1e-10 * np.abs(w).max()


def _scaled(system, axis, factor):
    scale = np.ones(3)
    scale[axis] = factor
    return dataclasses.replace(system, positions=system.positions * scale, box=system.box * scale)


@pytest.mark.parametrize("model", ["lennard_jones", "spc_fw", "mpnn"])
def test_virial_diagonal_is_minus_the_strain_derivative_of_the_energy(argon, water, model):
    """Finite differences of the energy of a really stretched box (positions and box scaled, potential
    rebuilt for the new box) against the virial's diagonal: every term type, including the network."""
    if model == "lennard_jones":
        s, _, _ = argon
        build = lambda sys: potentials.lennard_jones_potential(sys, 0.3405, 0.996, cutoff=1.0, neighbor_mode="dense")
    elif model == "spc_fw":
        s, _, _ = water
        build = lambda sys: potentials.spc_fw_potential(sys, cutoff=0.45, skin=0.05, neighbor_mode="dense")
    else:  # same hyperparameters for every box (mpnn_potential would re-derive its normalisation from V)
        s, _, _ = water
        net, net_params = potentials.mpnn_potential(s, "tiny", cutoff=0.45, neighbor_mode="dense")
        build = lambda sys: (potentials.MPNNPotential(space.periodic(sys.box), net.neighbors, net.species,
                                                      2, net.hyper, dtype=sys.positions.dtype), net_params)
    pot, params = build(s)
    x = s.positions
    w = np.asarray(pot.virial(params, x, pot.neighbors.allocate(x)))
    h = 1e-6
    for axis in range(3):
        e = []
        for factor in (1 + h, 1 - h):
            sys = _scaled(s, axis, factor)
            p, _ = build(sys)
            e.append(float(p.energy(params, sys.positions, p.neighbors.allocate(sys.positions))))
        np.testing.assert_allclose(w[axis, axis], -(e[0] - e[1]) / (2 * h), rtol=1e-6, atol=1e-6 * np.abs(w).max())
