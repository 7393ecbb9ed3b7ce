"""A message-passing neural-network potential (SchNet-style, invariant) in Flax NNX.

Design choices, and why:

- Edges are the (N, K) full neighbour list itself (potentials/graph.py): messages are a gather `h[j]` and
  a row sum, with no edge list to build and no capacity of its own; the radial filters, functions of the
  pair distance and most of the arithmetic, are evaluated once per pair rather than at both of its slots.
  Padded slots and pairs beyond the cutoff get an envelope of exactly zero, so they contribute nothing to
  the energy or to any of its derivatives.
- Radial features are sinc(n r / r_c) times the envelope (1 - (r/r_c)^2)^3.  Both are even in r, so the
  energy is a smooth function of r^2 and hence of the positions even at r = 0: coincident atoms give
  finite forces and Hessians.  The envelope and its first two derivatives vanish at the cutoff, so the
  energy, the forces and the force derivatives (which the adjoint differentiates) stay continuous when a
  pair crosses it.
- Parameters are a pure nested dict of arrays (string keys, as orbax and JSON want them).  The potential
  keeps the NNX graph definition and merges the dict into a module inside `energy`, so parameters flow
  through `jax.grad`, the reverse-time adjoint's custom VJP, `vmap` and `shard_map` as plain data.
- Bounded radial features also mean the network alone cannot forbid atoms to come closer than its data
  did: `core` adds a fixed repulsive wall below the data's closest pairs (potentials/core.py).
- The message sum is divided by the expected neighbour count, so feature magnitudes do not grow with the
  density (argon and water start from comparable scales).

Units: nm, kJ/mol; the network's energies are in kJ/mol by definition.
"""

import copy
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dmd_dist import space
from dmd_dist.errors import InputError
from dmd_dist.neighbors import NeighborListFns, choose_neighbors
from dmd_dist.potentials.base import Potential
from dmd_dist.potentials.core import CoreRepulsion
from dmd_dist.potentials.graph import NeighborGraph


@dataclasses.dataclass(frozen=True)
class MPNNHyper:
    """Architecture of the network: everything that fixes the shape and meaning of the parameters."""

    features: int = 16  # width of the atom features
    n_interactions: int = 2  # message-passing blocks
    n_radial: int = 8  # radial basis functions
    hidden: tuple = (16,)  # hidden widths of the per-atom energy MLP
    cutoff: float = 0.6  # nm
    avg_neighbors: float = 10.0  # divides the message sum


PRESETS = {
    "tiny": MPNNHyper(features=16, n_interactions=2, n_radial=8, hidden=(16,)),  # CPU tests
    "small": MPNNHyper(features=32, n_interactions=3, n_radial=8, hidden=(32, 32)),  # CPU demos
    "paper": MPNNHyper(features=64, n_interactions=2, n_radial=12, hidden=(64, 64)),  # ~ the paper's EANN
}


def resolve_hyper(hyper, **overrides) -> MPNNHyper:
    """A preset name, a mapping of MPNNHyper fields or an MPNNHyper, with non-None `overrides` applied."""
    if isinstance(hyper, str):
        if hyper not in PRESETS:
            raise InputError("potential.preset", f"unknown preset {hyper!r} ({', '.join(PRESETS)})")
        hyper = PRESETS[hyper]
    elif isinstance(hyper, dict):
        unknown = set(hyper) - {f.name for f in dataclasses.fields(MPNNHyper)}
        if unknown:
            raise InputError("potential.hyper", f"unknown MPNN hyperparameters {sorted(unknown)}")
        hyper = MPNNHyper(**hyper)
    hyper = dataclasses.replace(hyper, **{k: v for k, v in overrides.items() if v is not None})
    return dataclasses.replace(hyper, hidden=tuple(hyper.hidden))


def expected_neighbors(n_atoms, volume, cutoff):
    """Mean number of atoms within `cutoff` of an atom in a uniform fluid (at least 1)."""
    return max(1.0, (n_atoms - 1) / volume * 4.0 / 3.0 * math.pi * cutoff**3)


# -- radial features -----------------------------------------------------------------------------------


def radial_features(r, mask, n_radial, cutoff):
    """(basis (..., n_radial), envelope (...)) of distances `r`: sinc(n r/r_c) and (1 - (r/r_c)^2)^3, the
    envelope 0 where `mask` is False."""
    x = r / cutoff
    n = jnp.arange(1, n_radial + 1, dtype=x.dtype)
    envelope = jnp.where(mask, (1.0 - x * x) ** 3, 0.0)
    return jnp.sinc(n * x[..., None]), envelope


def pair_filter(mlp, graph: NeighborGraph, basis, envelope):
    """W(r_ij) env(r_ij) (N, K, F) at every slot, the MLP evaluated once per pair."""
    return graph.slot_values(mlp(basis) * envelope[..., None])


# -- modules -------------------------------------------------------------------------------------------


class MLP(nnx.Module):
    """Dense layers with SiLU between them (smooth: forces and their derivatives are continuous)."""

    def __init__(self, sizes, *, dtype, rngs):
        self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, param_dtype=dtype, rngs=rngs)
                                for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.silu(layer(x))
        return self.layers[-1](x)


class Interaction(nnx.Module):
    """A continuous-filter convolution: m_i = sum_j W(r_ij) env(r_ij) (A h)_j / n_avg; h += MLP(m)."""

    def __init__(self, hyper: MPNNHyper, *, dtype, rngs):
        f = hyper.features
        self.filter = MLP((hyper.n_radial, f, f), dtype=dtype, rngs=rngs)
        self.project = nnx.Linear(f, f, use_bias=False, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.update = MLP((f, f, f), dtype=dtype, rngs=rngs)
        self.scale = 1.0 / hyper.avg_neighbors

    def __call__(self, h, graph: NeighborGraph, basis, envelope):
        w = pair_filter(self.filter, graph, basis, envelope)
        m = jnp.sum(w * graph.gather(self.project(h)), axis=1) * self.scale
        return h + self.update(m)


class Representation(nnx.Module):
    """Invariant atom features: species embedding refined by message passing over the edges."""

    def __init__(self, n_species, hyper: MPNNHyper, *, dtype, rngs):
        self.embed = nnx.Embed(n_species, hyper.features, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.interactions = nnx.List([Interaction(hyper, dtype=dtype, rngs=rngs) for _ in range(hyper.n_interactions)])
        self.n_radial = hyper.n_radial
        self.cutoff = hyper.cutoff

    def __call__(self, species, graph: NeighborGraph):
        basis, envelope = radial_features(graph.pair_r, graph.pair_mask, self.n_radial, self.cutoff)
        h = self.embed(species)
        for block in self.interactions:
            h = block(h, graph, basis, envelope)
        return h


class MPNN(nnx.Module):
    """Per-atom energies: an MLP of the atom features plus a learnable offset per species."""

    def __init__(self, n_species, hyper: MPNNHyper, *, dtype, rngs):
        self.representation = Representation(n_species, hyper, dtype=dtype, rngs=rngs)
        self.readout = MLP((hyper.features,) + hyper.hidden + (1,), dtype=dtype, rngs=rngs)
        self.offset = nnx.Param(jnp.zeros(n_species, dtype))

    def __call__(self, species, graph: NeighborGraph):
        h = self.representation(species, graph)
        return self.readout(h)[:, 0] + self.offset[...][species]


# -- modules as pure functions of a parameter dict -----------------------------------------------------


def _string_keys(tree):
    """Nested dict with every key a string (orbax and JSON restore list indices as strings anyway)."""
    if isinstance(tree, dict):
        return {str(k): _string_keys(v) for k, v in tree.items()}
    return tree


class PureModule:
    """An NNX module split once into its static graph definition and a pure parameter dict.

    `merge(params)` rebuilds the module from any dict of the same structure (arrays or tracers), so the
    caller's functions stay pure functions of `params`.
    """

    def __init__(self, module: nnx.Module):
        self.graphdef, state = nnx.split(module)
        self.initial = _string_keys(nnx.to_pure_dict(state))
        self._template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
        self._structure = jax.tree.structure(self.initial)

    def merge(self, params):
        if jax.tree.structure(params) != self._structure:
            raise ValueError("parameter dict does not match the network: expected the structure of "
                             f"default_params(), {self._structure}, got {jax.tree.structure(params)}")
        state = jax.tree.map(lambda a: a, self._template)  # a fresh State to fill (the template stays abstract)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)


def build_module(make, initialise=True):
    """The NNX module `make()`; with `initialise` False only its structure (nnx.eval_shape: parameters are
    jax.ShapeDtypeStruct, nothing is computed), for a model whose parameters come from a checkpoint: eager
    initialisation compiles a few hundred small programs (about 1 s at start-up)."""
    return make() if initialise else nnx.eval_shape(make)


def default_dtype(dtype=None):
    """`dtype`, or JAX's default float (float64 when x64 is enabled)."""
    return jnp.dtype(jnp.result_type(float) if dtype is None else dtype)


class MPNNPotential(Potential):
    """The MPNN as a Potential: `energy(params, positions, nbrs)` with params a pure nested dict.

    `hyper`: a preset name ("tiny", "small", "paper"), a dict of MPNNHyper fields or an MPNNHyper.
    `dtype`: of the parameters (default: JAX's default float); use the positions' dtype.  `initialise`
    False: `default_params()` gives only the parameters' shapes and dtypes (`build_module`).  `pairs`: the
    radial filters once per pair (True), at every slot (False) or by list size ("auto"; potentials/graph.py).
    `core`: a `CoreRepulsion` added to the network's energy (potentials/core.py), or None.
    """

    def __init__(self, displacement, neighbors: NeighborListFns, species, n_species, hyper="tiny", key=None,
                 dtype=None, initialise=True, pairs="auto", core: CoreRepulsion | None = None):
        self.hyper = resolve_hyper(hyper)
        if self.hyper.cutoff > neighbors.cutoff:
            raise ValueError(f"MPNN cutoff {self.hyper.cutoff} exceeds the neighbour-list cutoff {neighbors.cutoff}")
        self.displacement = displacement
        self.neighbors = neighbors
        self.species = np.asarray(species, np.int32)
        self.pairs = pairs
        self.core = core

        def make():  # the default key inside: nnx.eval_shape then computes no key either
            rngs = nnx.Rngs(params=jax.random.PRNGKey(0) if key is None else key)
            return MPNN(n_species, self.hyper, dtype=default_dtype(dtype), rngs=rngs)

        self._net = PureModule(build_module(make, initialise))

    def default_params(self):
        return jax.tree.map(lambda a: a, self._net.initial)  # fresh dicts: callers may edit theirs

    def atom_energies(self, params, positions, nbrs):
        """(N,) per-atom energies in kJ/mol; they sum to `energy`."""
        graph = NeighborGraph(self.displacement, positions, nbrs.idx, self.hyper.cutoff, self.pairs)
        species = jnp.asarray(self.species)
        energies = self._net.merge(params)(species, graph)
        return energies if self.core is None else energies + self.core.atom_energies(graph, species)

    def with_core(self, core: CoreRepulsion | None):
        """The same network (and parameters) with the wall `core` instead of its own."""
        other = copy.copy(self)
        other.core = core
        return other

    def energy(self, params, positions, nbrs):
        return jnp.sum(self.atom_energies(params, positions, nbrs))


def mpnn_potential(system, preset="tiny", cutoff=0.6, skin=0.1, neighbor_mode="auto", capacity_factor=1.25, seed=0,
                   pairs="auto"):
    """(MPNNPotential, params) for `system`: periodic box, its species, parameters in its dtype.

    `preset`: a name in PRESETS or a dict of MPNNHyper fields; `cutoff` (nm) overrides the preset's, and
    the message normalisation is set to the expected neighbour count at the system's density.
    """
    neighbors = choose_neighbors(system, cutoff, skin, neighbor_mode, capacity_factor)
    avg_neighbors = expected_neighbors(system.n_atoms, system.volume, cutoff)
    hyper = resolve_hyper(preset, cutoff=cutoff, avg_neighbors=avg_neighbors)
    pot = MPNNPotential(space.periodic(system.box), neighbors, system.topology.species,
                        len(system.topology.species_names), hyper, jax.random.PRNGKey(seed), system.positions.dtype,
                        pairs=pairs)
    return pot, pot.default_params()
