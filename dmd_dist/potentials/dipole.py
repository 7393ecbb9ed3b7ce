"""Total dipole moment of a system (e nm): fixed point charges, and a learned dipole model.

The IR spectrum needs M(t) = sum_i q_i r_i.  Positions in dmd_dist are unwrapped, but a structure file or
an integrator asked to wrap may split molecules across the box; every molecule is therefore made whole
next to its first atom (minimum image) before summing, so wrapping never changes M.  For a neutral
system M does not depend on the origin; for a charged one it is taken about the centre of mass (the
usual convention, and translation invariant).

The learned model (`LearnedDipole`) predicts per-atom charges from the MPNN's invariant atom features,
shifted so that each molecule keeps its reference net charge, plus optional per-atom dipoles
mu_i = sum_j s(h_j, r_ij) (r_i - r_j) / n_avg (rotation-equivariant by construction).  Its parameters
are a pure dict, like the MPNN potential's.

`WithDipole` pairs any potential with one of these models (the `[dipole]` section): what the record
channel "dipole" and hence IR spectra use, for a classical force field or an MPNN alike.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dmd_dist import space
from dmd_dist.neighbors import choose_neighbors
from dmd_dist.potentials.base import Potential
from dmd_dist.potentials.graph import NeighborGraph
from dmd_dist.potentials.mpnn import (MLP, MPNNHyper, PureModule, Representation, build_module, default_dtype,
                                      expected_neighbors, radial_features, resolve_hyper)
from dmd_dist.potentials.species import per_species

DIPOLE_KEY = "dipole"  # where a learned dipole model's parameters sit in a potential's parameter tree


def fixed_charge_dipole(positions, charges, molecule, masses, box=None):
    """sum_i q_i (r_i - R_com) over whole molecules, e nm; equals sum_i q_i r_i for a neutral system."""
    x = space.whole_molecules(positions, molecule, box)
    centre = jnp.sum(masses[:, None] * x, axis=0) / jnp.sum(masses)
    return jnp.sum(charges[:, None] * (x - centre), axis=0)


def molecule_neutral(raw, molecule, n_molecules):
    """`raw` minus its mean over each molecule: sums to zero on every molecule."""
    total = jax.ops.segment_sum(raw, molecule, n_molecules)
    count = jax.ops.segment_sum(jnp.ones_like(raw), molecule, n_molecules)
    return raw - (total / count)[molecule]


class AtomicDipoles(nnx.Module):
    """mu_i = sum_j s_ij (r_i - r_j) / n_avg, s_ij = env(r_ij) W(r_ij) . (A h)_j: invariant weights times
    edge vectors, hence rotation-equivariant, translation-invariant and zero on masked edges."""

    def __init__(self, hyper: MPNNHyper, *, dtype, rngs):
        f = hyper.features
        self.filter = MLP((hyper.n_radial, f, f), dtype=dtype, rngs=rngs)
        self.project = nnx.Linear(f, f, use_bias=False, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.n_radial, self.cutoff, self.scale = hyper.n_radial, hyper.cutoff, 1.0 / hyper.avg_neighbors

    def __call__(self, h, graph: NeighborGraph):
        basis, envelope = radial_features(graph.pair_r, graph.pair_mask, self.n_radial, self.cutoff)
        s = jnp.sum(graph.slot_values(self.filter(basis)) * graph.gather(self.project(h)), axis=-1)
        s = s * graph.slot_values(envelope)
        return jnp.sum(s[..., None] * graph.vec, axis=1) * self.scale


class DipoleNet(nnx.Module):
    """Raw per-atom charges (N,) and per-atom dipoles (N, 3) from invariant atom features."""

    def __init__(self, n_species, hyper: MPNNHyper, atomic_dipoles=True, *, dtype, rngs):
        self.representation = Representation(n_species, hyper, dtype=dtype, rngs=rngs)
        self.charge = MLP((hyper.features,) + hyper.hidden + (1,), dtype=dtype, rngs=rngs)
        self.atomic = AtomicDipoles(hyper, dtype=dtype, rngs=rngs) if atomic_dipoles else None

    def __call__(self, species, graph: NeighborGraph):
        h = self.representation(species, graph)
        mu = jnp.zeros((graph.n_atoms, 3), h.dtype) if self.atomic is None else self.atomic(h, graph)
        return self.charge(h)[:, 0], mu


class LearnedDipole:
    """M = sum_i q_i (r_i - R_com) + sum_i mu_i with learned, molecule-constrained charges q.

    q_i = q_ref_i + raw_i - mean over i's molecule of raw: every molecule keeps the net charge of the
    reference charges (zero by default).  `reference_charges` (N,) may hold a fixed-charge model, which
    the network then corrects.  `box` None means open boundaries (no minimum image).  `pairs`: as for
    MPNNPotential (potentials/graph.py).
    """

    def __init__(self, displacement, neighbors, species, n_species, molecule, masses, box=None,
                 reference_charges=None, hyper="tiny", atomic_dipoles=True, key=None, dtype=None, initialise=True,
                 pairs="auto"):
        self.hyper, self.atomic_dipoles = resolve_hyper(hyper), atomic_dipoles
        if self.hyper.cutoff > neighbors.cutoff:
            raise ValueError(f"dipole cutoff {self.hyper.cutoff} exceeds the neighbour-list cutoff {neighbors.cutoff}")
        self.displacement, self.neighbors = displacement, neighbors
        self.species = np.asarray(species, np.int32)
        self.molecule = np.asarray(molecule, np.int32)
        self.n_molecules = int(self.molecule.max(initial=-1)) + 1
        self.masses = jnp.asarray(masses)
        self.box, self.pairs = box, pairs
        dtype = default_dtype(dtype)
        self.reference_charges = jnp.zeros(len(self.species), dtype) if reference_charges is None else \
            jnp.asarray(reference_charges, dtype)

        def make():  # the default key inside: nnx.eval_shape then computes no key either
            rngs = nnx.Rngs(params=jax.random.PRNGKey(0) if key is None else key)
            return DipoleNet(n_species, self.hyper, atomic_dipoles, dtype=dtype, rngs=rngs)

        self._net = PureModule(build_module(make, initialise))

    def default_params(self):
        return jax.tree.map(lambda a: a, self._net.initial)

    def charges_and_atomic_dipoles(self, params, positions, nbrs):
        """(q (N,) in e, constrained per molecule; mu (N, 3) in e nm)."""
        graph = NeighborGraph(self.displacement, positions, nbrs.idx, self.hyper.cutoff, self.pairs)
        raw, mu = self._net.merge(params)(jnp.asarray(self.species), graph)
        q = self.reference_charges + molecule_neutral(raw, jnp.asarray(self.molecule), self.n_molecules)
        return q, mu

    def dipole(self, params, positions, nbrs):
        """Total dipole (3,) in e nm."""
        q, mu = self.charges_and_atomic_dipoles(params, positions, nbrs)
        return fixed_charge_dipole(positions, q, self.molecule, self.masses, self.box) + jnp.sum(mu, axis=0)


class FixedCharges:
    """Dipole model of per-atom charges (N,) held fixed: they are not parameters."""

    def __init__(self, system, charges):
        self.charges = jnp.asarray(charges, system.positions.dtype)
        self.molecule, self.masses, self.box = system.topology.molecule, system.masses, system.box

    def dipole(self, params, positions, nbrs):
        return fixed_charge_dipole(positions, self.charges, self.molecule, self.masses, self.box)


class CoulombCharges:
    """Dipole model of the potential's own `coulomb` charges, read from its parameters (refining the
    charges moves the dipole too)."""

    def __init__(self, system):
        self.species = jnp.asarray(system.topology.species)
        self.molecule, self.masses, self.box = system.topology.molecule, system.masses, system.box

    def dipole(self, params, positions, nbrs):
        q = params["coulomb"]["charge"][self.species]
        return fixed_charge_dipole(positions, q, self.molecule, self.masses, self.box)


class WithDipole(Potential):
    """A potential with a dipole model: energy, forces and virial are the potential's, `dipole(params,
    positions, nbrs)` the model's total dipole (e nm).

    `key` None: the model reads the whole parameter tree (fixed or the potential's own charges).  A model
    with parameters of its own (`LearnedDipole`) keeps them under `params[key]`, beside the potential's, so
    that training refines both jointly, or one of them alone with a learning rate of 0 for the other.
    """

    def __init__(self, potential, model, key=None):
        self.base, self.model, self.key = potential, model, key
        self.neighbors, self.displacement = potential.neighbors, potential.displacement

    def potential_params(self, params):
        """The potential's part of `params`."""
        return params if self.key is None else {k: v for k, v in params.items() if k != self.key}

    def energy(self, params, positions, nbrs):
        return self.base.energy(self.potential_params(params), positions, nbrs)

    def forces(self, params, positions, nbrs):
        return self.base.forces(self.potential_params(params), positions, nbrs)

    def force_vjp(self, params, positions, nbrs):
        sub, select_vjp = jax.vjp(self.potential_params, params)
        f, vjp = self.base.force_vjp(sub, positions, nbrs)

        def back(a):
            g_x, g_sub = vjp(a)
            return g_x, select_vjp(g_sub)[0]

        return f, back

    def virial(self, params, positions, nbrs):
        return self.base.virial(self.potential_params(params), positions, nbrs)

    def dipole(self, params, positions, nbrs):
        return self.model.dipole(params if self.key is None else params[self.key], positions, nbrs)


def learned_dipole(system, preset="tiny", cutoff=0.6, skin=0.1, neighbor_mode="auto", capacity_factor=1.25,
                   reference_charges=None, atomic_dipoles=True, seed=0, neighbors=None, hyper=None, initialise=True,
                   pairs="auto"):
    """(LearnedDipole, params) for `system`; `reference_charges` None, a scalar or species -> charge (e).

    `neighbors`: a list to use (a potential's, whose cutoff must be at least this one's: edges beyond the
    dipole cutoff are masked), else one of its own (`model.neighbors`).  `hyper`: an exact architecture
    (a saved model's) instead of `preset` at `cutoff` normalised to the system's density.  `initialise`
    False: the params are only shapes and dtypes, to be filled from a checkpoint (`build_module`).  `pairs`:
    see LearnedDipole.
    """
    if hyper is None:
        hyper = resolve_hyper(preset, cutoff=cutoff, avg_neighbors=expected_neighbors(system.n_atoms, system.volume,
                                                                                       cutoff))
    hyper = resolve_hyper(hyper)
    if neighbors is None:
        neighbors = choose_neighbors(system, hyper.cutoff, skin, neighbor_mode, capacity_factor)
    top = system.topology
    by_species = per_species(0.0 if reference_charges is None else reference_charges, system, "dipole.charges")
    model = LearnedDipole(space.periodic(system.box), neighbors, top.species, len(top.species_names), top.molecule,
                          system.masses, system.box, by_species[top.species], hyper, atomic_dipoles,
                          jax.random.PRNGKey(seed), system.positions.dtype, initialise, pairs)
    model.species_charges = dict(zip(top.species_names, by_species.tolist()))  # exact, for a checkpoint's meta
    return model, model.default_params()
