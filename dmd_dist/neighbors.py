"""Fixed-capacity neighbour lists: `allocate` on the host, `update` inside jit, overflow never silent.

Format: a dense *full* list `idx` of shape (N, capacity); row i holds the atoms j != i that were within
`cutoff + skin` of i at the last rebuild, in increasing order, padded with the sentinel N.  Each pair
appears twice (i->j and j->i), which lets pair potentials compute forces by a gather and a row sum,
without any scatter (the fast pattern on CPU and GPU alike).

Protocol (JAX MD's): `nbrs = allocate(positions)` picks the capacity from the current configuration;
`nbrs = update(nbrs, positions)` rebuilds the list when some atom moved more than skin/2 since the last
rebuild.  If a rebuild finds more neighbours than the capacity, `nbrs.overflow` is set (and stays set);
the list is then incomplete and everything computed with it must be discarded: the caller re-allocates
with `allocate(positions, capacity=...)` from the last good state and runs again.  Under `vmap` (also
nested: windows of frames, each of two halves) a rebuild happens for all replicas at once when any of
them needs it, so that a batched `lax.cond` does not degrade into rebuilding at every step.
"""

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching

from dmd_dist import space
from dmd_dist.errors import InputError


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class NeighborList:
    idx: jax.Array  # (N, capacity) int32, padded with N
    reference_position: jax.Array  # positions at the last rebuild
    overflow: jax.Array  # bool: some rebuild needed more than `capacity` slots (sticky)
    max_count: jax.Array  # int32: largest neighbour count seen at any rebuild
    rebuilds: jax.Array  # int32: number of rebuilds since allocation

    @property
    def capacity(self) -> int:
        return self.idx.shape[-1]


class NeighborListFns(NamedTuple):
    allocate: Callable[..., NeighborList]
    update: Callable[[NeighborList, jax.Array], NeighborList]
    cutoff: float
    skin: float


def grown_capacity(max_count, capacity_factor):
    """List capacity for `max_count` neighbours with `capacity_factor` headroom (at least 1 slot)."""
    return max(1, int(math.ceil(max_count * capacity_factor)))


def neighbor_list(displacement, cutoff, skin=0.1, capacity_factor=1.25):
    """Neighbour list for pairs within `cutoff` (nm), rebuilt when an atom moved more than skin/2."""
    list_cutoff2 = (cutoff + skin) ** 2
    trigger2 = (0.5 * skin) ** 2

    def counts(positions):
        n = positions.shape[0]
        d = displacement(positions[:, None, :], positions[None, :, :])
        mask = jnp.sum(d * d, axis=-1) < list_cutoff2
        mask = mask & ~jnp.eye(n, dtype=bool)
        return mask, jnp.sum(mask, axis=1, dtype=jnp.int32)

    def build(positions, capacity):
        n = positions.shape[0]
        mask, count = counts(positions)
        # Sorting j (N for the out-of-range entries) packs each row's neighbours in increasing j, padded with
        # N, without a scatter: 2.3x faster on CPU than top_k of the same keys (346 Ar, 159 slots: 1.9 against
        # 4.3 ms per replica), and the rebuild is a fifth of a forward step there.
        idx = jnp.sort(jnp.where(mask, jnp.arange(n, dtype=jnp.int32)[None, :], n), axis=1)[:, :capacity]
        max_count = jnp.max(count)
        return idx, max_count

    def fresh(positions, capacity):
        idx, max_count = build(positions, capacity)
        return NeighborList(idx, positions, max_count > capacity, max_count, jnp.zeros((), jnp.int32))

    count_jit = jax.jit(lambda p: jnp.max(counts(p)[1]))
    fresh_jit = jax.jit(fresh, static_argnums=1)

    def allocate(positions, capacity=None):
        """Host-side: size the list for `positions` ((N, 3), or (R, N, 3) for R replicas)."""
        positions = jnp.asarray(positions)
        batched = positions.ndim == 3
        if capacity is None:
            flat = positions if batched else positions[None]
            max_count = max(int(count_jit(p)) for p in flat)
            capacity = grown_capacity(max_count, capacity_factor)
        capacity = int(min(capacity, positions.shape[-2] - 1))
        if batched:
            return jax.vmap(lambda p: fresh_jit(p, capacity))(positions)
        return fresh_jit(positions, capacity)

    def needs_rebuild(nbrs, positions):
        d = displacement(positions, nbrs.reference_position)
        return jnp.max(jnp.sum(d * d, axis=-1)) > trigger2

    def rebuilt(nbrs, positions):
        idx, max_count = build(positions, nbrs.capacity)
        return NeighborList(
            idx,
            positions,
            nbrs.overflow | (max_count > nbrs.capacity),
            jnp.maximum(nbrs.max_count, max_count),
            nbrs.rebuilds + 1,
        )

    @custom_batching.custom_vmap
    def _update(nbrs, positions):
        return jax.lax.cond(needs_rebuild(nbrs, positions), rebuilt, lambda n, p: n, nbrs, positions)

    @_update.def_vmap
    def _update_batched(axis_size, in_batched, nbrs, positions):
        out = _update_together(*_broadcast_batch(axis_size, in_batched, (nbrs, positions)))
        return out, jax.tree.map(lambda _: True, out)

    @custom_batching.custom_vmap
    def _update_together(nbrs, positions):
        """Lists and positions with a leading replica axis: all rebuilt when any replica needs it."""
        need = jnp.any(jax.vmap(needs_rebuild)(nbrs, positions))
        return jax.lax.cond(need, jax.vmap(rebuilt), lambda n, p: n, nbrs, positions)

    @_update_together.def_vmap
    def _update_together_batched(axis_size, in_batched, nbrs, positions):
        # A vmap around a vmap (windows of frames, each of two halves): one replica axis of both, so that
        # the condition stays one scalar (a batched cond would rebuild every list at every step).
        nbrs, positions = _broadcast_batch(axis_size, in_batched, (nbrs, positions))
        flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), (nbrs, positions))
        out = jax.tree.map(lambda a: a.reshape((axis_size, -1) + a.shape[1:]), _update_together(*flat))
        return out, jax.tree.map(lambda _: True, out)

    def update(nbrs, positions):
        """Inside jit: rebuild if needed (positions are not differentiated through the list)."""
        return _update(nbrs, jax.lax.stop_gradient(positions))

    return NeighborListFns(allocate, update, float(cutoff), float(skin))


def all_pairs(n_atoms):
    """The dense path for small systems: every pair, never rebuilt, never overflowing."""
    j = np.arange(n_atoms - 1)
    idx = j[None, :] + (j[None, :] >= np.arange(n_atoms)[:, None])

    def allocate(positions, capacity=None):
        positions = jnp.asarray(positions)
        nbrs = NeighborList(
            jnp.asarray(idx, jnp.int32),
            positions[-1] if positions.ndim == 3 else positions,  # unused by the dense path
            jnp.zeros((), bool),
            jnp.asarray(n_atoms - 1, jnp.int32),
            jnp.zeros((), jnp.int32),
        )
        if positions.ndim == 3:
            return jax.tree.map(lambda x: jnp.broadcast_to(x, (positions.shape[0],) + x.shape), nbrs)
        return nbrs

    def update(nbrs, positions):
        return nbrs

    return NeighborListFns(allocate, update, math.inf, 0.0)


def choose_neighbors(system, cutoff, skin=0.1, mode="auto", capacity_factor=1.25):
    """The neighbour list for `system`: "list" (rebuilt with a skin), "dense" (all pairs) or "auto".

    "auto" takes the dense path when a list would hold most pairs anyway (small boxes).
    """
    half_box = 0.5 * float(np.min(np.asarray(system.box)))
    n = system.n_atoms
    if mode == "auto":
        expected = n / system.volume * 4.0 / 3.0 * math.pi * (cutoff + skin) ** 3 * capacity_factor
        mode = "dense" if (expected > 0.6 * (n - 1) or cutoff + skin > half_box) else "list"
    reach = cutoff + (skin if mode == "list" else 0.0)
    if reach > half_box:
        what = f"cutoff {cutoff} nm" + (f" + skin {skin} nm" if mode == "list" else "")
        raise InputError("potential.cutoff", f"{what} exceeds half the box ({half_box:.4f} nm): the "
                                             "minimum-image convention would miss pairs")
    if mode == "dense":
        return all_pairs(n)
    if mode == "list":
        return neighbor_list(space.periodic(system.box), cutoff, skin, capacity_factor)
    raise InputError("potential.neighbor_list", f"unknown mode {mode!r} (auto, list, dense)")


def _broadcast_batch(axis_size, in_batched, args):
    def bcast(x, b):
        return x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))

    return jax.tree.map(bcast, args, tuple(in_batched))
