"""Running integrators: scans with periodic recording, and the neighbour-list overflow protocol.

`retry_on_overflow` is the one loop that answers an overflowing neighbour list: the caller re-allocates a
larger list from the last good state and the work is redone, counting re-allocations.  Pairs are never
dropped.  `run_checked` is that loop for a chunk whose results carry their lists.
"""

import dataclasses

import jax
import jax.numpy as jnp

from dmd_dist.neighbors import NeighborList, grown_capacity


def scan_steps(step, params, state, n_steps, record=None, record_every=1):
    """Run `n_steps` of `step(state, params)`; return (final state, records).

    `record(state)` is evaluated after every `record_every`-th step (so records[k] belongs to step
    (k+1)*record_every).  `n_steps` must be a multiple of `record_every`: nothing is dropped silently.
    """
    if n_steps % record_every:
        raise ValueError(f"n_steps={n_steps} is not a multiple of record_every={record_every}")

    def inner(s, _):
        return step(s, params), None

    def outer(s, _):
        s, _ = jax.lax.scan(inner, s, None, length=record_every)
        return s, (record(s) if record is not None else None)

    return jax.lax.scan(outer, state, None, length=n_steps // record_every)


@dataclasses.dataclass
class OverflowCounter:
    reallocations: int = 0


def retry_on_overflow(attempt, state, counter: OverflowCounter, max_tries=8):
    """`attempt(state) -> (result, retry)`: `retry` is None when no neighbour list overflowed, else the state
    to try again from (with larger lists).  Returns the first result that did not overflow."""
    for _ in range(max_tries):
        result, retry = attempt(state)
        if retry is None:
            return result
        state = retry
        counter.reallocations += 1
    raise RuntimeError(f"neighbour list still overflowing after {max_tries} re-allocations")


def run_checked(chunk, state, neighbor_fns, counter: OverflowCounter, capacity_factor=1.25, max_tries=8,
                relist=None):
    """`chunk(state) -> (state, out)`; re-run from `state` with a larger list while any neighbour list
    in the chunk's results (the final state's, or others it returns) overflowed.

    Works for one state or a batch of replica states (leading axis).  Returns the chunk's results.
    `relist(state, capacity)`: how to give `state` new lists (default: `neighbor_fns.allocate` of its
    positions; replicas sharded over processes need their own, see `train.trainer`).
    """
    if relist is None:
        def relist(s, capacity):
            return dataclasses.replace(s, neighbors=neighbor_fns.allocate(s.position, capacity=capacity))

    def attempt(s):
        result = chunk(s)
        lists = [x for x in jax.tree.leaves(result, is_leaf=lambda x: isinstance(x, NeighborList))
                 if isinstance(x, NeighborList)]
        if not any(bool(jnp.any(n.overflow)) for n in lists):
            return result, None
        return None, relist(s, grown_capacity(max(int(jnp.max(n.max_count)) for n in lists), capacity_factor))

    return retry_on_overflow(attempt, state, counter, max_tries)
