"""Dipoles: the fixed-charge dipole against hand-computed values, its invariance under translation and
wrapping; the learned dipole's charge constraint, rotation equivariance and differentiability; a potential
with a dipole model (`WithDipole`) and the adjoint's gradient of a learned dipole's IR-like loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist import integrators, neighbors, potentials, space, systems
from dmd_dist.adjoint import DirectAdjoint, ReverseTimeAdjoint, Segment, run_segment
from dmd_dist.observables import spectra
from dmd_dist.potentials.dipole import (DIPOLE_KEY, CoulombCharges, FixedCharges, LearnedDipole, WithDipole,
                                        fixed_charge_dipole, learned_dipole)

# One bent molecule: O at the origin, H along x and y; charges (e) and masses (amu).
MOLECULE = jnp.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0]])
CHARGES = jnp.array([-0.8, 0.4, 0.4])
MASSES = jnp.array([16.0, 1.0, 1.0])


def test_fixed_charge_dipole_of_a_neutral_molecule_is_the_analytic_value_anywhere():
    expected = [0.04, 0.04, 0.0]  # 0.4 e * 0.1 nm along x and along y
    mol = np.zeros(3, np.int32)
    np.testing.assert_allclose(fixed_charge_dipole(MOLECULE, CHARGES, mol, MASSES), expected, atol=1e-15)
    np.testing.assert_allclose(fixed_charge_dipole(MOLECULE + jnp.array([1.0, -2.0, 30.0]), CHARGES, mol, MASSES),
                               expected, atol=1e-14)


def test_fixed_charge_dipole_ignores_wrapping_and_handles_ions():
    box = jnp.full(3, 1.0)
    near_edge = MOLECULE + jnp.array([0.95, 0.95, 0.5])  # the H atoms stick out of the box
    ion = jnp.array([[0.3, 0.2, 0.1]])
    x = jnp.concatenate([near_edge, ion])
    q, m, mol = jnp.append(CHARGES, 1.0), jnp.append(MASSES, 23.0), np.array([0, 0, 0, 1])
    reference = fixed_charge_dipole(x, q, mol, m, box)
    wrapped = space.wrap_atoms(x, box)
    assert not np.allclose(wrapped, x)
    np.testing.assert_allclose(fixed_charge_dipole(wrapped, q, mol, m, box), reference, atol=1e-14)
    # A charged system is measured about its centre of mass: still translation invariant.
    np.testing.assert_allclose(fixed_charge_dipole(x + 0.37, q, mol, m, box), reference, atol=1e-14)
    centre = jnp.sum(m[:, None] * x, 0) / jnp.sum(m)
    np.testing.assert_allclose(reference, jnp.sum(q[:, None] * (x - centre), 0), atol=1e-14)


def random_rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return jnp.asarray(q * np.linalg.det(q))


@pytest.fixture(scope="module")
def cluster_model():
    """Two water-like molecules, a cation and a charged diatomic in vacuum; reference charges per atom."""
    x = jnp.concatenate([MOLECULE, MOLECULE @ random_rotation(0).T + jnp.array([0.25, 0.0, 0.0]),
                         jnp.array([[0.0, 0.25, 0.1], [0.2, 0.2, 0.2], [0.3, 0.25, 0.2]])])
    species = np.array([0, 1, 1, 0, 1, 1, 2, 0, 1])
    molecule = np.array([0, 0, 0, 1, 1, 1, 2, 3, 3])
    q_ref = jnp.array([-0.8, 0.4, 0.4, -0.8, 0.4, 0.4, 1.0, -0.9, -0.1])  # net charges 0, 0, +1, -1
    masses = jnp.array([16.0, 1.0, 1.0, 16.0, 1.0, 1.0, 23.0, 16.0, 1.0])
    model = LearnedDipole(space.free(), neighbors.all_pairs(9), species, 3, molecule, masses,
                          reference_charges=q_ref, key=jax.random.PRNGKey(1))
    return model, model.default_params(), x, model.neighbors.allocate(x), q_ref


def test_learned_charges_keep_each_molecules_net_charge(cluster_model):
    model, params, x, nbrs, q_ref = cluster_model
    q, mu = jax.jit(model.charges_and_atomic_dipoles)(params, x, nbrs)
    sums = jax.ops.segment_sum(q, jnp.asarray(model.molecule), 4)
    np.testing.assert_allclose(sums, [0.0, 0.0, 1.0, -1.0], atol=1e-14)
    assert np.abs(q - q_ref).max() > 1e-4  # the network does change the charges
    assert q[6] == q_ref[6]  # a one-atom molecule keeps its charge exactly
    assert np.abs(mu).max() > 1e-6


def test_learned_dipole_rotates_with_the_system_and_is_translation_invariant(cluster_model):
    model, params, x, nbrs, _ = cluster_model
    dipole = jax.jit(model.dipole)
    m = dipole(params, x, nbrs)
    rot = random_rotation(3)
    np.testing.assert_allclose(dipole(params, x @ rot.T, nbrs), rot @ m, atol=1e-13)
    np.testing.assert_allclose(dipole(params, x + jnp.array([0.5, -3.0, 2.0]), nbrs), m, atol=1e-13)


def test_learned_dipole_params_are_a_differentiable_pure_dict(cluster_model):
    model, params, x, nbrs, _ = cluster_model
    dipole = jax.jit(model.dipole)
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: jnp.sum(dipole(p, x, nbrs) ** 2)))

    def loss(p):
        return value_and_grad(p)[0]

    g = value_and_grad(params)[1]
    assert jax.tree.structure(g) == jax.tree.structure(params)
    # Backprop against central differences along a random direction in each parameter group in turn
    # (h = 1e-5: 8e-9 relative apart here), so that a group cut off from the gradient is caught.
    rng = np.random.default_rng(0)
    for group in params:
        direction = jax.tree.map(lambda a: jnp.zeros_like(a), params)
        direction[group] = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params[group])
        along = sum(float(jnp.sum(a * d)) for a, d in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
        h = 1e-5
        fd = (float(loss(jax.tree.map(lambda p, d: p + h * d, params, direction)))
              - float(loss(jax.tree.map(lambda p, d: p - h * d, params, direction)))) / (2 * h)
        assert abs(along) > 1e-4, group
        assert along == pytest.approx(fd, rel=1e-6), group
    # M is affine in the atomic dipoles' projection A (mu_i = sum_j s_ij(A) r_ij, s linear in A; the
    # charges do not see A): d|M|^2/dA . D = 2 M(A) . (M(A + D) - M(A)) exactly, for any step D.
    m = dipole(params, x, nbrs)
    step = jnp.asarray(rng.standard_normal(params["atomic"]["project"]["kernel"].shape))
    moved = jax.tree.map(lambda a: a, params)
    moved["atomic"]["project"]["kernel"] = params["atomic"]["project"]["kernel"] + step
    exact = 2 * float(jnp.dot(m, dipole(moved, x, nbrs) - m))
    assert float(jnp.sum(g["atomic"]["project"]["kernel"] * step)) == pytest.approx(exact, rel=1e-10)
    # A constant added to every raw charge is removed by the per-molecule neutrality shift: the charge
    # head's output bias has no effect on M, so its gradient vanishes (the others are ~1e-2).
    assert float(jnp.abs(g["charge"]["layers"]["1"]["bias"]).max()) < 1e-14
    charges_only = LearnedDipole(model.displacement, model.neighbors, model.species, 3, model.molecule, model.masses,
                                 atomic_dipoles=False)
    assert "atomic" not in charges_only.default_params()


def test_factory_on_a_water_box_keeps_molecules_neutral_and_ignores_wrapping():
    s = systems.water_lattice(8, 300.0, jax.random.PRNGKey(4), density=1.0)
    model, params = learned_dipole(s, cutoff=0.25, reference_charges={"O": -0.82, "H": 0.41})
    x = s.positions + jnp.array([0.0, 0.0, 0.3])  # pushes some molecules across the box face
    nbrs = model.neighbors.allocate(x)
    q, _ = jax.jit(model.charges_and_atomic_dipoles)(params, x, nbrs)
    np.testing.assert_allclose(jax.ops.segment_sum(q, jnp.asarray(s.topology.molecule), 8), 0.0, atol=1e-14)
    wrapped = space.wrap_atoms(x, s.box)
    assert not np.allclose(wrapped, x)
    dipole = jax.jit(model.dipole)
    np.testing.assert_allclose(dipole(params, wrapped, nbrs), dipole(params, x, nbrs), atol=1e-13)


@pytest.fixture(scope="module")
def mpnn_water():
    """8 waters, an MPNN potential and a learned dipole model on its neighbour list."""
    s = systems.water_lattice(8, 300.0, jax.random.PRNGKey(6), density=1.0)
    pot, params = potentials.mpnn_potential(s, cutoff=0.27, skin=0.03, neighbor_mode="list", seed=1)
    model, dparams = learned_dipole(s, cutoff=0.25, reference_charges={"O": -0.82, "H": 0.41}, seed=2,
                                    neighbors=pot.neighbors)
    return s, pot, params, model, dparams


def test_with_dipole_is_the_potential_plus_the_models_dipole(mpnn_water):
    s, pot, params, model, dparams = mpnn_water
    both = WithDipole(pot, model, DIPOLE_KEY)
    joint = {**params, DIPOLE_KEY: dparams}
    x = s.positions
    nbrs = pot.neighbors.allocate(x)
    assert float(both.energy(joint, x, nbrs)) == float(pot.energy(params, x, nbrs))
    np.testing.assert_array_equal(both.forces(joint, x, nbrs), pot.forces(params, x, nbrs))
    np.testing.assert_array_equal(both.virial(joint, x, nbrs), pot.virial(params, x, nbrs))
    np.testing.assert_array_equal(both.dipole(joint, x, nbrs), model.dipole(dparams, x, nbrs))
    # The adjoint's force VJP: the potential's, with a zero cotangent for the dipole model's parameters.
    a = jax.random.normal(jax.random.PRNGKey(8), x.shape, x.dtype)
    f, back = both.force_vjp(joint, x, nbrs)
    f_pot, back_pot = pot.force_vjp(params, x, nbrs)
    (g_x, g_p), (r_x, r_p) = back(a), back_pot(a)
    np.testing.assert_array_equal(f, f_pot)
    np.testing.assert_array_equal(g_x, r_x)
    jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in g_p.items() if k != DIPOLE_KEY}, r_p)
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(g_p[DIPOLE_KEY]))
    # Fixed charges read no parameters; the potential's own charges read its `coulomb` term.
    q = jnp.where(jnp.asarray(s.topology.species) == 0, -0.82, 0.41)
    fixed = WithDipole(pot, FixedCharges(s, q))
    expected = fixed_charge_dipole(x, q, s.topology.molecule, s.masses, s.box)
    np.testing.assert_allclose(fixed.dipole(params, x, nbrs), expected, rtol=1e-14)
    water_pot, water_params = potentials.spc_fw_potential(s, cutoff=0.3, skin=0.01)
    own = WithDipole(water_pot, CoulombCharges(s))
    np.testing.assert_allclose(own.dipole(water_params, x, nbrs), expected, rtol=1e-14)


def test_learned_dipole_gradient_through_a_segment_equals_direct_backprop_and_finite_differences(mpnn_water):
    """An IR-like loss (the dipole-derivative ACF) of the learned dipole along an NVE segment of the MPNN:
    the reverse-time adjoint's gradient for the network and the dipole model equals direct backprop, and
    finite differences along a random direction of the dipole parameters."""
    s, pot, params, model, dparams = mpnn_water
    both = WithDipole(pot, model, DIPOLE_KEY)
    joint = {**params, DIPOLE_KEY: dparams}
    s = systems.prepare(s, both, joint, 300.0, jax.random.PRNGKey(7), 200, 0.0005, 5.0)
    dyn = integrators.Dynamics(both, s.masses, wrap="molecules", box=s.box, molecule=jnp.asarray(s.topology.molecule),
                               n_molecules=s.topology.n_molecules)
    seg = Segment(dyn, 0.0005, 40, 1, lambda st, p, c: both.dipole(p, st.position, st.neighbors))
    nbrs = both.neighbors.allocate(s.positions)

    def loss(adjoint):
        def f(p):
            res = run_segment(adjoint, seg, p, s.positions, s.velocities, nbrs, None,
                              jnp.zeros((), s.positions.dtype))
            return jnp.sum(spectra.dipole_derivative_acf(res.records, 0.0005))
        return f

    reverse = jax.jit(jax.grad(loss(ReverseTimeAdjoint())))(joint)
    direct = jax.jit(jax.grad(loss(DirectAdjoint())))(joint)
    scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(direct))
    for a, b in zip(jax.tree.leaves(reverse), jax.tree.leaves(direct)):  # a leaf of zero gradient is round-off
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10 * scale)
    assert float(jnp.max(jnp.abs(reverse[DIPOLE_KEY]["charge"]["layers"]["0"]["kernel"]))) > 0
    rng = np.random.default_rng(3)
    direction = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), joint)
    direction = {**jax.tree.map(jnp.zeros_like, params), DIPOLE_KEY: direction[DIPOLE_KEY]}
    value = jax.jit(loss(DirectAdjoint()))
    h = 1e-5
    fd = (float(value(jax.tree.map(lambda p, d: p + h * d, joint, direction)))
          - float(value(jax.tree.map(lambda p, d: p - h * d, joint, direction)))) / (2 * h)
    along = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(reverse), jax.tree.leaves(direction)))
    assert along == pytest.approx(fd, rel=1e-6)
