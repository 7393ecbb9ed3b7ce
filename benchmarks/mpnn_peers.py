"""Peer message-passing potentials for `benchmarks/mpnn_cost.py --peers`, matched to an MPNN preset.

Imported only when peers are asked for; dmd_dist never imports JAX MD or e3x.  They are installed
outside the project's venv, every package with --no-deps, so that jax, jaxlib, flax, numpy and optax keep
their pins (the full command is in docs/mpnn_cost.md, "Against peer implementations"):

    .venv/bin/python -m pip install --no-deps --target /tmp/peers-site jax-md==0.2.29 e3x==1.0.2 ...
    PYTHONPATH=/tmp/peers-site .venv/bin/python benchmarks/mpnn_cost.py --force-only --models paper --peers jaxmd,e3x

Each peer is a `Potential` (energy by the peer's code; forces and force VJP by the base class's autodiff,
as for our MPNN) whose third argument is the peer's own graph structure, built once on the start frame:

- `jaxmd_sparse`, `jaxmd_dense`: `jax_md.energy.graph_network_neighbor_list` (a Battaglia et al. graph
  network: edge, node and global MLPs, sum aggregation, energy from the global state) with its own
  neighbour list in its `Sparse` (edge list, jraph) or `Dense` ((N, K) padded, segment_sum) format, at the
  same cutoff, skin (its `dr_threshold`) and capacity factor as ours.
- `slots`: our own network (the same module and parameters) computed as dmd_dist did before its pair
  layout (potentials/graph.py): radial filters at every slot of the (N, K) list, plain gathers whose
  derivatives autodiff turns into scatter-adds.  No optional package; tests/test_mpnn.py checks the
  library against it.
- `e3x_sparse`, `e3x_dense`: our SchNet-like architecture rebuilt with e3x's layers and index operations
  (`e3x.nn.Embed`, `Dense`, `silu`, `basis` with `sinc`, `smooth_cutoff`, `e3x.ops.gather_src`,
  `indexed_sum`), layer for layer, on our neighbour list: as e3x's dense index list (the same (N, K)
  array, `where` mask) or as its sparse one (the same pairs as an edge list, capacity factor 1.25 on the
  pair count).
"""

import math
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist import space
from dmd_dist.potentials.base import Potential

PEERS = ("slots", "jaxmd_sparse", "jaxmd_dense", "e3x_sparse", "e3x_dense")
FAMILIES = {"jaxmd": ("jaxmd_sparse", "jaxmd_dense"), "e3x": ("e3x_sparse", "e3x_dense")}


def expand(names):
    """Peer names, with `jaxmd` and `e3x` standing for both of their graph layouts."""
    out = []
    for name in names:
        out += FAMILIES.get(name, (name,))
    unknown = set(out) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown peers {sorted(unknown)} (choose from slots, jaxmd, e3x, {', '.join(PEERS)})")
    return list(dict.fromkeys(out))


class PeerPotential(Potential):
    """`energy(params, positions, graph)` of a peer's pure energy function; `graph` is the peer's own."""

    def __init__(self, energy_fn, graph_info, matching):
        self._energy = energy_fn
        self.graph_info = graph_info
        self.matching = matching

    def energy(self, params, positions, graph):
        return self._energy(params, positions, graph)


def build(name, ours, params, system, x0, nbrs, skin, capacity_factor, seed=0):
    """(PeerPotential, params, graph) for peer `name` matched to `ours` (an MPNNPotential; `params` its
    parameters, which only the `slots` reference uses)."""
    hyper, dtype = ours.hyper, x0.dtype
    if name == "slots":
        return slot_layout(ours), params, nbrs
    key = jax.random.PRNGKey(seed)
    if name.startswith("jaxmd"):
        return _jaxmd(name == "jaxmd_dense", hyper, system, x0, skin, capacity_factor, key, dtype)
    return _e3x(name == "e3x_dense", hyper, system, x0, nbrs, capacity_factor, key, dtype)


# -- ours, before the pair layout ------------------------------------------------------------------------


def slot_layout_atom_energies(ours, params, positions, idx):
    """(N,) atom energies of MPNNPotential `ours` as computed before potentials/graph.py (commit 35dcfd9),
    its radial features written out again here so that the reference shares no geometry with the library."""
    n, cutoff = positions.shape[0], ours.hyper.cutoff
    j = jnp.minimum(idx, n - 1)
    vec = ours.displacement(positions[:, None, :], positions[j])
    r2 = jnp.sum(vec * vec, axis=-1)
    mask = (idx < n) & (r2 < cutoff * cutoff)
    nonzero = mask & (r2 > 0)
    r = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, r2, 1.0)), 0.0)
    x = r / cutoff
    basis = jnp.sinc(jnp.arange(1, ours.hyper.n_radial + 1, dtype=x.dtype) * x[..., None])
    envelope = jnp.where(mask, (1.0 - x * x) ** 3, 0.0)
    net = ours._net.merge(params)
    species = jnp.asarray(ours.species)
    h = net.representation.embed(species)
    for block in net.representation.interactions:
        w = block.filter(basis) * envelope[..., None]
        h = h + block.update(jnp.sum(w * block.project(h)[j], axis=1) * block.scale)
    return net.readout(h)[:, 0] + net.offset[...][species]


def slot_layout(ours):
    info = {"layout": "ours before the pair layout: (N, K) list, filters at every slot, autodiff's scatters"}
    matching = {"equal": "the same network and parameters", "differs": "only the order of the arithmetic"}
    return PeerPotential(lambda p, x, nbrs: jnp.sum(slot_layout_atom_energies(ours, p, x, nbrs.idx)), info, matching)


# -- JAX MD --------------------------------------------------------------------------------------------


def _jaxmd(dense, hyper, system, x0, skin, capacity_factor, key, dtype):
    from flax import nnx
    from jax_md import energy, partition
    from jax_md import space as md_space

    # Its list pruning scatters int64 into int32 under x64: harmless, but noisy.
    warnings.filterwarnings("ignore", message="scatter inputs have incompatible types", category=FutureWarning)
    box = jnp.asarray(system.box, dtype)
    displacement, _ = md_space.periodic(box)
    species = jnp.asarray(system.topology.species, dtype)[:, None]
    neighbor_fn, energy_fn = energy.graph_network_neighbor_list(
        displacement, box, hyper.cutoff, skin, key=key, nodes=species, n_recurrences=hyper.n_interactions,
        mlp_sizes=(hyper.features, hyper.features), format=partition.Dense if dense else partition.Sparse,
        capacity_multiplier=capacity_factor, activation=jax.nn.silu)
    graph = neighbor_fn.allocate(space.wrap_atoms(x0, box))  # its cell-list path wants wrapped positions
    if graph.did_buffer_overflow:
        raise RuntimeError("JAX MD neighbour list overflowed at allocation")
    graphdef, params, rest = nnx.split(energy_fn.model, nnx.Param, ...)
    params = jax.tree.map(lambda a: a.astype(dtype), params)  # its layers default to float32 parameters

    def energy_of(p, x, g):
        return nnx.merge(graphdef, p, rest)(x, g)

    n = x0.shape[0]
    idx = np.asarray(graph.idx)
    slots = int(idx.size) if dense else int(idx.shape[1])
    used = int(np.sum(idx < n)) if dense else int(np.sum(idx[0] < n))
    info = {"layout": "Dense (N, K), self included" if dense else "Sparse edge list (jraph), self included",
            "shape": list(idx.shape), "slots": slots, "used_slots": used}
    matching = {
        "equal": f"cutoff {hyper.cutoff} nm, skin {skin} nm, capacity factor {capacity_factor}, "
                 f"{hyper.n_interactions} message-passing steps (n_recurrences), MLP width {hyper.features} "
                 f"(mlp_sizes ({hyper.features}, {hyper.features})), SiLU, species as the node input, "
                 "parameters in the run's float type",
        "differs": "a Battaglia graph network, not SchNet: edge, node and global MLPs on concatenated "
                   "features (inputs 8, 6 and 4 x width), edges start from the raw displacement vector "
                   "(no radial basis, not rotation invariant), hard cutoff (no envelope), energy from the "
                   "global state; its own neighbour list (self pairs included)",
    }
    return PeerPotential(energy_of, info, matching), params, graph


# -- e3x -----------------------------------------------------------------------------------------------


def sparse_pairs(nbrs, capacity_factor):
    """Our (N, K) list as e3x's sparse index list (dst_idx, src_idx): the same pairs, padded with dst = N."""
    idx = np.asarray(nbrs.idx)
    n = idx.shape[0]
    dst, col = np.nonzero(idx < n)
    src = idx[dst, col]
    capacity = max(1, math.ceil(len(dst) * capacity_factor))
    pad = capacity - len(dst)
    return (jnp.asarray(np.concatenate([dst, np.full(pad, n)]), jnp.int32),
            jnp.asarray(np.concatenate([src, np.zeros(pad, int)]), jnp.int32))


def _e3x(dense, hyper, system, x0, nbrs, capacity_factor, key, dtype):
    import e3x
    from flax import linen

    n = x0.shape[0]
    n_species = len(system.topology.species_names)
    species = jnp.asarray(system.topology.species, jnp.int32)
    displacement = space.periodic(system.box)
    kw = dict(dtype=dtype, param_dtype=dtype)

    def mlp(x, sizes):
        for i, size in enumerate(sizes):
            x = e3x.nn.Dense(size, **kw)(x)
            x = e3x.nn.silu(x) if i < len(sizes) - 1 else x
        return x

    class SchNet(linen.Module):
        """Our MPNN's layers with e3x's: filter MLP(basis) x cutoff, projected neighbour features gathered
        and summed over the index list, residual update MLP; per-atom readout MLP plus species offset."""

        @linen.compact
        def __call__(self, x, graph):
            if dense:
                valid = graph < n
                vec = displacement(x[:, None, :], x[jnp.minimum(graph, n - 1)])
                gather = dict(adj_idx=graph)
                reduce = dict(adj_idx=graph, where=valid)
            else:
                dst, src = graph
                valid = dst < n
                vec = displacement(x[jnp.minimum(dst, n - 1)], x[src])
                gather = dict(src_idx=src)
                reduce = dict(dst_idx=dst, num_segments=n, indices_are_sorted=True)
            basis, r = e3x.nn.basis(vec, max_degree=0, num=hyper.n_radial,
                                    radial_fn=partial(e3x.nn.sinc, limit=hyper.cutoff), return_norm=True)
            cut = jnp.where(valid, e3x.nn.smooth_cutoff(r, cutoff=hyper.cutoff), 0.0)[..., None, None, None]
            h = e3x.nn.Embed(n_species, hyper.features, **kw)(species)
            for _ in range(hyper.n_interactions):
                w = mlp(basis, (hyper.features, hyper.features)) * cut
                hj = e3x.ops.gather_src(e3x.nn.Dense(hyper.features, use_bias=False, **kw)(h), **gather)
                m = e3x.ops.indexed_sum(w * hj, **reduce) / hyper.avg_neighbors
                h = h + mlp(m, (hyper.features, hyper.features))
            offset = self.param("offset", jax.nn.initializers.zeros, (n_species,), dtype)
            return jnp.sum(mlp(h, tuple(hyper.hidden) + (1,))) + jnp.sum(offset[species])

    graph = jnp.asarray(nbrs.idx) if dense else sparse_pairs(nbrs, capacity_factor)
    model = SchNet()
    params = model.init(key, x0, graph)

    slots = int(np.size(nbrs.idx)) if dense else int(graph[0].shape[0])
    used = int(np.sum(np.asarray(nbrs.idx) < n))
    info = {"layout": "dense index list (our (N, K) list, where mask)" if dense
            else "sparse index list (our pairs as an edge list, segment_sum)",
            "shape": list(np.shape(nbrs.idx)) if dense else [2, slots], "slots": slots, "used_slots": used}
    matching = {
        "equal": f"our layers one for one (species embedding, {hyper.n_interactions} interactions: filter MLP "
                 f"{hyper.n_radial}->{hyper.features}->{hyper.features} times the cutoff function, bias-free "
                 f"projection, sum over neighbours / avg_neighbors, residual MLP {hyper.features}->"
                 f"{hyper.features}->{hyper.features}; readout MLP {hyper.features}->"
                 f"{'->'.join(map(str, hyper.hidden))}->1 plus a species offset), hence the same parameter "
                 f"count; SiLU; sinc radial basis of {hyper.n_radial} functions; cutoff {hyper.cutoff} nm; our "
                 "neighbour list and minimum-image displacement",
        "differs": "cutoff function: e3x's smooth_cutoff exp(1 - 1/(1 - (r/rc)^2)) instead of our (1 - (r/rc)^2)^3; "
                   "e3x's feature layout (N, 1, 1, F), its safe norm and its initialisers",
    }
    return PeerPotential(lambda p, x, g: model.apply(p, x, g), info, matching), params, graph
