"""The neighbour list as a message-passing graph, with each pair's radial work done once.

A full list (neighbors.py) holds every pair twice: j in row i at slot (i, k), and i in row j at the
*reverse slot* (j, k'); rows are sorted, so k' is found by a binary search.  A function of the pair
distance alone (the MPNN's radial filters: most of its arithmetic, and more of its force VJP) is the same
at both slots, so it is evaluated on the unique pairs i < j within the cutoff, packed into
C = floor(N K / 2) rows (a pair takes two slots, so they always fit: there is no capacity to overflow),
and spread to both slots by a gather.  Measured on 192-atom water (docs/mpnn_cost.md): the force VJP
1.5-2.1x and the force 1.1-1.6x faster than filtering every slot (float32 and float64); the index
bookkeeping costs about 0.5 ms per evaluation there (134 slots per atom), and the force program takes
0.3-0.9 s longer to compile.

`pairs="auto"` takes the pair layout from PAIR_LAYOUT_SLOTS slots on (the benchmark's 192-atom water has
26 000, the paper-size configs 20 000-30 000); below, each slot is its own "pair" (the per-slot layout,
no bookkeeping): the extra compilation outweighs the saving in the short runs that small systems get
(64 Ar and 48-atom water: 0.2 ms less per force call, 0.9 ms per force VJP, 0.1-0.6 s more to compile),
and the test-sized configs (at most 108 atoms, padded lists) keep the arithmetic they had.  A dense
(every-pair) list has N - 1 slots per atom, so from 92 atoms on it takes pairs.

This relies on the list being symmetric, which a list built from one set of positions is (the
minimum-image distance of i to j is bitwise that of j to i).  A list that overflowed is not, and
everything computed with it is discarded anyway (neighbors.py).
"""

import jax
import jax.numpy as jnp

from dmd_dist.varying import varying_like

PAIR_LAYOUT_SLOTS = 8192  # "auto": pairs from this many slots (N K) on


def row_search(idx, value):
    """For every slot (i, k), the first slot of row idx[i, k] holding a value >= `value[i, k]` (rows sorted)."""
    n, k = idx.shape
    row = jnp.minimum(idx, n - 1)

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        less = idx[row, jnp.minimum(mid, k - 1)] < value
        return jnp.where(less, mid + 1, lo), jnp.where(less, hi, mid)

    # ceil(log2(k + 1)) halvings close [lo, hi); a loop, not unrolled: it compiles once
    bounds = varying_like((jnp.zeros(idx.shape, jnp.int32), jnp.full(idx.shape, k, jnp.int32)), idx)  # shard_map
    return jnp.minimum(jax.lax.fori_loop(0, k.bit_length(), halve, bounds)[0], k - 1)


def _expand(mask, ndim):
    """`mask` with trailing unit axes, to broadcast against an array of `ndim` dimensions."""
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


class NeighborGraph:
    """Edges i -> idx[i, k] of a full (N, K) neighbour list padded with N, within `cutoff`.

    Per slot: `vec` (N, K, 3) = r_i - r_j (minimum image), `r` (N, K) its norm (0 where masked), `mask`
    (N, K) a real neighbour within the cutoff.  Per unique pair (i < j within the cutoff): `pair_r` (C,),
    `pair_mask` (C,).  `gather(x)` gives x[j] at every slot, `slot_values(w)` a per-pair array at both of
    its pair's slots.  `pairs`: True, False (every slot its own pair: C is (N, K)) or "auto".

    With pairs, `idx` must be a full list as neighbors.py builds it: rows sorted, padded with N, and
    symmetric (j in row i iff i in row j).  An overflowed list is not; its results are wrong but finite,
    and the caller discards them.
    """

    def __init__(self, displacement, positions, idx, cutoff, pairs="auto"):
        n, k = idx.shape
        self.n_atoms = n
        self.pairs = n * k >= PAIR_LAYOUT_SLOTS if pairs == "auto" else bool(pairs)
        self._j = jnp.minimum(idx, n - 1)
        # The norm is a double `where`: masked and coincident pairs never see sqrt'(0), so second derivatives
        # stay finite (a coincident pair gets r = 0 with zero derivative, right for even radial features).
        self.vec = displacement(positions[:, None, :], self.gather(positions))
        r2 = jnp.sum(self.vec * self.vec, axis=-1)
        self.mask = (idx < n) & (r2 < cutoff * cutoff)
        nonzero = self.mask & (r2 > 0)
        self.r = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, r2, 1.0)), 0.0)
        if not self.pairs:
            self.pair_r, self.pair_mask = self.r, self.mask
            return

        # Pair p is the p-th upper slot (j > i) within the cutoff in slot order; a lower slot takes the pair
        # of its reverse slot.  Ranks by a cumulative count per row plus row offsets; slots of pairs by one
        # scatter of unique indices.
        atom = jnp.arange(n, dtype=idx.dtype)[:, None]
        reverse = self._j * k + row_search(idx, jnp.broadcast_to(atom, idx.shape))
        upper = self.mask & (idx > atom)
        per_row = jnp.sum(upper, axis=1, dtype=jnp.int32)
        rank = jnp.cumsum(per_row) - per_row
        beyond = n * k + jnp.arange(n * k, dtype=jnp.int32).reshape(n, k)  # distinct out-of-range ranks: dropped
        rank = jnp.where(upper, rank[:, None] + jnp.cumsum(upper, axis=1, dtype=jnp.int32) - 1, beyond).reshape(-1)
        capacity = max(1, n * k // 2)
        self.pair_mask = jnp.arange(capacity) < jnp.sum(per_row)
        self._pair_slot = jnp.zeros(capacity, jnp.int32).at[rank].set(
            jnp.arange(n * k, dtype=jnp.int32), mode="drop", unique_indices=True)
        self._slot_pair = jnp.minimum(jnp.where(upper.reshape(-1), rank, rank[reverse.reshape(-1)]), capacity - 1)
        self.pair_r = self.pair_values(self.r)

    def gather(self, x):
        """(N, ...) -> (N, K, ...): x[j] at every slot (padded slots hold the last atom's: masked anyway)."""
        return x[self._j]

    def pair_values(self, y):
        """(N, K, ...) -> (C, ...): a per-slot array at each pair's upper slot, 0 in unused pair rows."""
        if not self.pairs:
            return y
        flat = y.reshape((-1,) + y.shape[2:])
        return jnp.where(_expand(self.pair_mask, y.ndim - 1), flat[self._pair_slot], 0)

    def slot_values(self, w):
        """(C, ...) -> (N, K, ...): a per-pair array at both slots of its pair, 0 at masked slots (without
        pairs: `w` itself, whose masked slots the caller's envelope zeroes)."""
        if not self.pairs:
            return w
        return jnp.where(_expand(self.mask, w.ndim + 1), w[self._slot_pair].reshape(self.mask.shape + w.shape[1:]), 0)
