"""The MPNN potential: symmetries (rotation, translation, permutation, periodic images), forces against
finite differences, finite second derivatives at padded and coincident pairs, smoothness at the cutoff,
float32, vmap, and the reverse-time adjoint through an NVE segment against direct backprop."""

import dataclasses
import importlib.util
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from dmd_dist import integrators, neighbors, space, systems
from dmd_dist.adjoint import DirectAdjoint, ReverseTimeAdjoint, Segment, run_segment
from dmd_dist.errors import InputError
from dmd_dist.potentials.dipole import learned_dipole
from dmd_dist.potentials.mpnn import PRESETS, MPNNPotential, mpnn_potential

ROOT = Path(__file__).resolve().parents[1]
CUTOFF = 0.6


def random_cluster(n, seed, half_width=0.3, min_distance=0.1):
    """n points in a cube, no two closer than `min_distance` (so every pair is distinct)."""
    rng = np.random.default_rng(seed)
    points = []
    while len(points) < n:
        p = rng.uniform(-half_width, half_width, 3)
        if all(np.linalg.norm(p - q) > min_distance for q in points):
            points.append(p)
    return jnp.asarray(np.array(points))


def random_rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return jnp.asarray(q * np.linalg.det(q))  # proper rotation


SPECIES = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])


class Setup(NamedTuple):
    """A potential with its parameters, a configuration and jitted energy and forces."""

    pot: MPNNPotential
    params: dict
    x: jax.Array
    nbrs: object
    energy: Callable
    forces: Callable


def setup(pot, params, x):
    return Setup(pot, params, x, pot.neighbors.allocate(x), jax.jit(pot.energy), jax.jit(pot.forces))


@pytest.fixture(scope="module")
def cluster():
    """Ten atoms of two species in vacuum, every pair (the dense path), tiny preset, float64."""
    pot = MPNNPotential(space.free(), neighbors.all_pairs(len(SPECIES)), SPECIES, 2,
                        dataclasses.replace(PRESETS["tiny"], cutoff=CUTOFF, avg_neighbors=5.0), jax.random.PRNGKey(0))
    params = pot.default_params()
    params["offset"] = jnp.array([-1.0, 2.0])
    return setup(pot, params, random_cluster(len(SPECIES), seed=0))


BOX = 1.5


@pytest.fixture(scope="module")
def periodic():
    """24 atoms of two species in a 1.5 nm box with a padded neighbour list."""
    disp = space.periodic(jnp.full(3, BOX))
    pot = MPNNPotential(disp, neighbors.neighbor_list(disp, CUTOFF, 0.1, capacity_factor=1.5), np.arange(24) % 2, 2,
                        "tiny", jax.random.PRNGKey(1))
    s = setup(pot, pot.default_params(), jnp.asarray(np.random.default_rng(1).uniform(0.0, BOX, (24, 3))))
    assert np.any(np.asarray(s.nbrs.idx) == 24)  # padded slots present
    return s


def test_energy_invariant_and_forces_equivariant_under_rotation(cluster):
    c, rot = cluster, random_rotation(2)
    e, f = c.energy(c.params, c.x, c.nbrs), c.forces(c.params, c.x, c.nbrs)
    np.testing.assert_allclose(c.energy(c.params, c.x @ rot.T, c.nbrs), e, rtol=1e-12)
    np.testing.assert_allclose(c.forces(c.params, c.x @ rot.T, c.nbrs), f @ rot.T, atol=1e-12 * np.abs(f).max())
    assert np.abs(f).max() > 1e-3  # the test has something to rotate


def test_energy_invariant_under_translation_and_same_species_permutation(cluster):
    c = cluster
    e, f = c.energy(c.params, c.x, c.nbrs), c.forces(c.params, c.x, c.nbrs)
    np.testing.assert_allclose(c.energy(c.params, c.x + jnp.array([0.3, -1.2, 7.0]), c.nbrs), e, rtol=1e-12)
    rng = np.random.default_rng(3)
    perm = np.concatenate([rng.permutation(5), 5 + rng.permutation(5)])
    assert np.all(SPECIES[perm] == SPECIES)
    np.testing.assert_allclose(c.energy(c.params, c.x[perm], c.nbrs), e, rtol=1e-12)
    np.testing.assert_allclose(c.forces(c.params, c.x[perm], c.nbrs), f[perm], atol=1e-12 * np.abs(f).max())
    # Swapping the species of two unlike atoms is a different system, and the energy sees it.
    swap = np.arange(10)
    swap[[0, 9]] = [9, 0]
    assert abs(float(c.energy(c.params, c.x[swap], c.nbrs) - e)) > 1e-6


def test_energy_invariant_under_periodic_images(periodic):
    p = periodic
    shifted = p.x.at[5].add(BOX * jnp.array([1.0, 0.0, -2.0]))
    nbrs = p.pot.neighbors.allocate(shifted)
    np.testing.assert_allclose(p.energy(p.params, shifted, nbrs), p.energy(p.params, p.x, p.nbrs), rtol=1e-12)
    f = p.forces(p.params, p.x, p.nbrs)
    np.testing.assert_allclose(p.forces(p.params, shifted, nbrs), f, atol=1e-12 * np.abs(f).max())


@pytest.mark.parametrize("which", ["cluster", "periodic"])
def test_forces_match_central_finite_differences(which, request):
    s = request.getfixturevalue(which)
    f = np.asarray(s.forces(s.params, s.x, s.nbrs))
    h = 1e-5
    fd = np.zeros((4, 3))
    for atom, axis in np.ndindex(4, 3):
        step = jnp.zeros_like(s.x).at[atom, axis].set(h)
        fd[atom, axis] = -(s.energy(s.params, s.x + step, s.nbrs) - s.energy(s.params, s.x - step, s.nbrs)) / (2 * h)
    err = np.abs(f[:4] - fd).max() / np.abs(f).max()
    print(f"{which}: max |F - F_fd| / max |F| = {err:.1e}")
    assert err < 1e-7, err


def all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(tree))


def test_second_derivatives_finite_at_padded_and_coincident_pairs(periodic, cluster):
    p = periodic
    x = p.x.at[1].set(p.x[0])  # atoms 0 and 1 coincide
    nbrs = p.pot.neighbors.allocate(x)
    assert np.any(np.asarray(nbrs.idx) == x.shape[0])  # and the list is padded

    @jax.jit
    def curvatures(params, x):
        """HVP of the energy along a random direction, and d/dparams of |F|^2: both second derivatives."""
        v = jax.random.normal(jax.random.PRNGKey(5), x.shape)
        _, hvp = jax.jvp(lambda y: p.pot.forces(params, y, nbrs), (x,), (v,))
        return hvp, jax.grad(lambda q: jnp.sum(p.pot.forces(q, x, nbrs) ** 2))(params)

    assert all_finite(curvatures(p.params, x))
    # Coincidence is not special: the energy is continuous as a pair merges.
    c = cluster
    merged, near = c.x.at[1].set(c.x[0]), c.x.at[1].set(c.x[0] + 1e-7)
    np.testing.assert_allclose(c.energy(c.params, near, c.nbrs), c.energy(c.params, merged, c.nbrs), rtol=1e-8)
    assert all_finite(c.forces(c.params, merged, c.nbrs))


def test_energy_and_force_vanish_continuously_at_the_cutoff():
    """Across the cutoff the energy is continuous and C2: E(rc - eps) - E(far) = O(eps^3), F = O(eps^2)
    (one order more at initialisation, where the filters vanish with the basis at r_c)."""
    pot = MPNNPotential(space.free(), neighbors.all_pairs(2), [0, 1], 2, "tiny", jax.random.PRNGKey(6))
    s = setup(pot, pot.default_params(), jnp.zeros((2, 3)))
    pair = lambda r: jnp.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0]])  # noqa: E731
    isolated = s.energy(s.params, pair(10.0), s.nbrs)
    assert float(s.energy(s.params, pair(CUTOFF + 1e-9), s.nbrs)) == float(isolated)
    assert abs(float(s.energy(s.params, pair(0.4), s.nbrs) - isolated)) > 1e-6  # the pair does interact
    de = [float(s.energy(s.params, pair(CUTOFF - eps), s.nbrs) - isolated) for eps in (1e-3, 1e-4)]
    f = [float(s.forces(s.params, pair(CUTOFF - eps), s.nbrs)[1, 0]) for eps in (1e-3, 1e-4)]
    assert de[0] / de[1] > 0.95e3 and f[0] / f[1] > 0.95e2, (de, f)


def test_float32_agrees_with_float64(periodic):
    p = periodic
    pot32 = MPNNPotential(p.pot.displacement, p.pot.neighbors, p.pot.species, 2, "tiny", jax.random.PRNGKey(1),
                          jnp.float32)
    s = setup(pot32, pot32.default_params(), p.x.astype(jnp.float32))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(s.params))
    e32, f32 = s.energy(s.params, s.x, s.nbrs), s.forces(s.params, s.x, s.nbrs)
    assert e32.dtype == jnp.float32 and f32.dtype == jnp.float32
    params64 = jax.tree.map(lambda a: a.astype(jnp.float64), s.params)
    np.testing.assert_allclose(e32, p.energy(params64, p.x, p.nbrs), rtol=1e-5)
    f64 = p.forces(params64, p.x, p.nbrs)
    np.testing.assert_allclose(f32, f64, atol=1e-4 * np.abs(f64).max())


def test_params_are_a_pure_dict_that_vmaps_and_differentiates(periodic):
    p = periodic
    assert isinstance(p.params, dict) and all(isinstance(a, jax.Array) for a in jax.tree.leaves(p.params))
    xs = jnp.stack([p.x, p.x + 0.01])
    batched = jax.jit(jax.vmap(p.pot.energy, (None, 0, 0)))(p.params, xs, p.pot.neighbors.allocate(xs))
    np.testing.assert_allclose(batched, [p.energy(p.params, x, p.pot.neighbors.allocate(x)) for x in xs], rtol=1e-12)
    g = jax.jit(jax.grad(p.pot.energy))(p.params, p.x, p.nbrs)
    assert jax.tree.structure(g) == jax.tree.structure(p.params)
    np.testing.assert_allclose(g["offset"], [12.0, 12.0])  # dE/d(offset_s) = number of atoms of species s
    with pytest.raises(ValueError, match="does not match"):
        p.pot.energy({"offset": p.params["offset"]}, p.x, p.nbrs)


def test_factory_presets_and_errors():
    s = systems.lattice_fluid(32, 94.4, jax.random.PRNGKey(7), density=1.374)
    pot, params = mpnn_potential(s, "tiny", cutoff=0.5)
    assert pot.hyper.cutoff == 0.5 and pot.hyper.avg_neighbors > 5
    assert params["offset"].shape == (1,) and params["offset"].dtype == s.positions.dtype
    assert PRESETS["paper"].n_radial == 12 and PRESETS["paper"].hidden == (64, 64) and PRESETS["paper"].cutoff == 0.6
    with pytest.raises(InputError, match="preset"):
        mpnn_potential(s, "huge", cutoff=0.5)
    with pytest.raises(InputError, match="half the box"):
        mpnn_potential(s, "tiny", cutoff=0.6)


def test_an_uninitialised_network_has_the_shapes_of_an_initialised_one_and_computes_with_given_parameters(periodic):
    """`initialise=False` (a model whose parameters come from a checkpoint): default_params() are shapes and
    dtypes only, laid out like the initialised network's, and the potential computes with real parameters."""
    p = periodic
    pot = MPNNPotential(p.pot.displacement, p.pot.neighbors, p.pot.species, 2, p.pot.hyper, dtype=jnp.float64,
                        initialise=False)
    abstract = pot.default_params()
    assert all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(abstract))
    assert jax.tree.structure(abstract) == jax.tree.structure(p.params)

    def layout(tree):
        return [(a.shape, a.dtype) for a in jax.tree.leaves(tree)]

    assert layout(abstract) == layout(p.params)
    assert pot.energy(p.params, p.x, p.nbrs) == p.pot.energy(p.params, p.x, p.nbrs)


def max_rel(a, b):
    """Largest per-leaf max |a - b| / max |b| (0 where both leaves are exactly zero)."""
    return max(float(jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(y)), 1e-300))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_reverse_time_adjoint_equals_direct_backprop_in_float64(periodic):
    """20 steps of 1 fs of 24 argon-mass atoms on a padded neighbour list whose tiny skin forces rebuilds
    inside the segment: dL/dparams, dL/dx0 and dL/dv0 of both strategies agree."""
    masses = jnp.full(24, 39.948)
    v0 = systems.maxwell_boltzmann(jax.random.PRNGKey(8), masses, 300.0)
    s = systems.make_system(periodic.x, masses, BOX, np.arange(24) % 2, ("Ar", "Kr"), velocities=v0)
    pot, params = mpnn_potential(s, "tiny", cutoff=CUTOFF, skin=0.005, capacity_factor=1.5)
    last = params["readout"]["layers"]["1"]
    last["kernel"] = 300.0 * last["kernel"]  # forces of a few kJ/mol/nm as in liquid argon, not ~0.02
    seg = Segment(integrators.Dynamics(pot, s.masses), 0.001, 20, 2, lambda st, p, v0: jnp.sum(st.velocity * v0, -1))
    nbrs0 = pot.neighbors.allocate(s.positions)

    def gradient(adjoint):
        def loss(params, x0, v0, probe):
            res = run_segment(adjoint, seg, params, x0, v0, nbrs0, v0, probe)
            return jnp.sum(jnp.mean(res.records, -1)) + jnp.sum(res.position[:3] ** 2), res.neighbors

        # Unoptimised XLA code compiles ~3x faster on CPU, and 20 steps run in milliseconds either way.
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True),
                       compiler_options={"xla_backend_optimization_level": 0})
        return grad(params, s.positions, s.velocities, jnp.zeros(()))

    (direct, nbrs), (reverse, _) = gradient(DirectAdjoint()), gradient(ReverseTimeAdjoint())
    assert int(nbrs.rebuilds) > 0 and not bool(nbrs.overflow) and pot.neighbors.skin == 0.005
    rel = max_rel(reverse[:3], direct[:3])
    print(f"MPNN adjoint vs direct: max rel diff {rel:.1e}, reconstruction error {float(reverse[3]):.1e} nm, "
          f"{int(nbrs.rebuilds)} list rebuilds")
    assert rel < 1e-8
    assert float(reverse[3]) < 1e-10
    assert float(jnp.abs(direct[0]["representation"]["embed"]["embedding"]).max()) > 1e-6  # a real gradient


def slot_layout_reference():
    """benchmarks/mpnn_peers.py's `slot_layout`: the network as computed before the pair layout."""
    spec = importlib.util.spec_from_file_location("mpnn_peers", ROOT / "benchmarks/mpnn_peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    return peers.slot_layout


def liquid(kind):
    """A disordered liquid-like frame: 64 Ar or 32 waters, float64."""
    key = jax.random.PRNGKey(11)
    if kind == "argon":
        s = systems.lattice_fluid(64, 94.4, key, density=1.374)
        cutoff = 0.6
    else:
        s = systems.water_lattice(32, 300.0, key, density=1.0)
        cutoff = 0.44  # + skin 0.05 within half the 0.99 nm box
    x = s.positions + 0.02 * jax.random.normal(jax.random.fold_in(key, 1), s.positions.shape)
    return dataclasses.replace(s, positions=x), cutoff


@pytest.mark.parametrize("kind, mode, presets", [("argon", "list", tuple(PRESETS)), ("water", "list", ("tiny",)),
                                                 ("water", "dense", ("tiny",))])
def test_pair_layout_gives_the_slot_layouts_energy_forces_and_force_vjp(kind, mode, presets):
    """Radial filters once per pair (potentials/graph.py) against once per slot with plain gathers (the
    layout before it): energy, forces and the adjoint's force VJP (a . dF/dx, a . dF/dparams) agree to
    1e-10 in float64 for every preset, on padded lists and on the every-pair path, under vmap and inside
    shard_map; without pairs they are the reference's; and the learned dipole model's dipole and its
    gradients agree with and without pairs."""
    reference = slot_layout_reference()
    s, cutoff = liquid(kind)
    for preset in presets:
        pot, params = mpnn_potential(s, preset, cutoff=cutoff, skin=0.05, neighbor_mode=mode, pairs=True)
        ref = reference(pot)
        xs = jnp.stack([s.positions, s.positions[::-1]])  # two replicas: the positions reversed make another frame
        nbrs = pot.neighbors.allocate(xs)
        if mode == "list":
            assert np.any(np.asarray(nbrs.idx) == s.n_atoms) and not np.any(np.asarray(nbrs.overflow))
        a = jax.random.normal(jax.random.PRNGKey(12), xs.shape[1:], xs.dtype)

        @partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})  # compiles faster
        def evaluate(params, xs, nbrs):
            def one(model, x, nb):
                f, vjp = model.force_vjp(params, x, nb)
                return model.energy(params, x, nb), f, vjp(a)
            return [jax.vmap(lambda x, nb: one(m, x, nb))(xs, nbrs) for m in (pot, ref)]

        ours, theirs = evaluate(params, xs, nbrs)
        assert max_rel(ours, theirs) < 1e-10, (preset, max_rel(ours, theirs))
        assert float(jnp.max(jnp.abs(theirs[1]))) > 1e-3  # real forces

    # Without pairs (what "auto" takes below graph.PAIR_LAYOUT_SLOTS): the reference's arithmetic (the same
    # operations in the same order; two separately compiled programs need not round alike, hence 1e-13).
    slots, _ = mpnn_potential(s, preset, cutoff=cutoff, skin=0.05, neighbor_mode=mode, pairs=False)
    f_slots, f_ref = (jax.jit(jax.vmap(lambda x, nb: m.forces(params, x, nb)))(xs, nbrs) for m in (slots, ref))
    assert max_rel(f_slots, f_ref) < 1e-13
    # Inside shard_map with check_vma, as the trainer runs it (the pair bookkeeping's loop carries vary).
    mesh = Mesh(np.array(jax.devices()[:1]), ("replica",))
    def local_forces(p, xs, nbrs):
        p = jax.lax.pcast(p, "replica", to="varying")
        return jax.vmap(lambda x, nb: pot.forces(p, x, nb))(xs, nbrs)

    sharded = jax.jit(jax.shard_map(local_forces, mesh=mesh, in_specs=(P(), P("replica"), P("replica")),
                                    out_specs=P("replica"), check_vma=True))
    assert max_rel(sharded(params, xs, nbrs), ours[1]) < 1e-12

    if kind == "water":
        models = [learned_dipole(s, cutoff=cutoff, skin=0.05, neighbor_mode=mode, pairs=p) for p in (True, False)]
        nb = models[0][0].neighbors.allocate(s.positions)
        dipole = jax.jit(lambda model, p, x: jax.value_and_grad(lambda p, x: jnp.sum(model.dipole(p, x, nb) * a[0]),
                                                                argnums=(0, 1))(p, x), static_argnums=0)
        with_pairs, without = (dipole(m, m_params, s.positions) for m, m_params in models)
        assert max_rel(with_pairs, without) < 1e-10 and float(jnp.abs(without[0])) > 1e-3
