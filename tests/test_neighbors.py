import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist import neighbors, potentials, space
from dmd_dist.driver import OverflowCounter, run_checked


def brute_force_pairs(x, box, cutoff):
    d = np.asarray(x)[:, None] - np.asarray(x)[None]
    d -= box * np.round(d / box)
    r = np.linalg.norm(d, axis=-1)
    i, j = np.nonzero((r < cutoff) & ~np.eye(len(x), dtype=bool))
    return set(zip(i.tolist(), j.tolist()))


def list_pairs(nbrs, n):
    idx = np.asarray(nbrs.idx)
    return {(i, int(j)) for i in range(n) for j in idx[i] if j < n}


def test_list_equals_brute_force(argon):
    s, _, _ = argon
    box = np.asarray(s.box)
    disp = space.periodic(s.box)
    fns = neighbors.neighbor_list(disp, 1.0, skin=0.1)
    nbrs = fns.allocate(s.positions)
    assert not nbrs.overflow
    assert list_pairs(nbrs, s.n_atoms) == brute_force_pairs(s.positions, box, 1.1)
    # Rows are sorted and padded with N.
    idx = np.asarray(nbrs.idx)
    valid = np.where(idx < s.n_atoms, idx, np.iinfo(np.int32).max)
    assert np.all(np.diff(valid, axis=1) >= 0)


def test_update_rebuilds_only_past_half_skin_and_stays_complete(argon):
    s, _, _ = argon
    disp = space.periodic(s.box)
    fns = neighbors.neighbor_list(disp, 1.0, skin=0.1)
    nbrs = fns.allocate(s.positions)
    small = s.positions.at[0].add(jnp.array([0.04, 0.0, 0.0]))  # < skin/2
    same = jax.jit(fns.update)(nbrs, small)
    assert int(same.rebuilds) == 0
    big = s.positions + jax.random.uniform(jax.random.PRNGKey(0), s.positions.shape, minval=-0.1, maxval=0.1)
    new = jax.jit(fns.update)(nbrs, big)
    assert int(new.rebuilds) == 1
    assert list_pairs(new, s.n_atoms) >= brute_force_pairs(big, np.asarray(s.box), 1.0)


def test_overflow_is_flagged_and_recovered_by_reallocation(argon):
    """Allocate for the liquid, then compress it locally: the rebuild finds more neighbours than the
    capacity, the flag is set, and the driver's re-allocation gives exactly the all-pairs forces."""
    from dmd_dist.integrators import MDState

    s, _, params = argon
    centre = jnp.mean(s.positions, 0)
    compressed = centre + 0.7 * (s.positions - centre)
    pot, _ = potentials.lennard_jones_potential(s, 0.3405, 0.996, cutoff=1.0, skin=0.1, neighbor_mode="list")
    dense, _ = potentials.lennard_jones_potential(s, 0.3405, 0.996, cutoff=1.0, neighbor_mode="dense")
    nbrs = pot.neighbors.allocate(s.positions)
    assert not bool(nbrs.overflow)

    def chunk(state):
        nb = pot.neighbors.update(state.neighbors, compressed)
        return dataclasses.replace(state, neighbors=nb), pot.forces(params, compressed, nb)

    state = MDState(s.positions, jnp.zeros_like(s.positions), jnp.zeros_like(s.positions), nbrs)
    first_state, _ = jax.jit(chunk)(state)
    assert bool(first_state.neighbors.overflow), "compressing must overflow the list"
    counter = OverflowCounter()
    new_state, f = run_checked(jax.jit(chunk), state, pot.neighbors, counter)
    assert counter.reallocations >= 1 and not bool(new_state.neighbors.overflow)
    assert new_state.neighbors.capacity > nbrs.capacity
    f_ref = dense.forces(params, compressed, dense.neighbors.allocate(compressed))
    np.testing.assert_allclose(f, f_ref, rtol=1e-9, atol=1e-6 * float(jnp.max(jnp.abs(f_ref))))


def test_batched_update_rebuilds_all_replicas_together(argon):
    s, _, _ = argon
    disp = space.periodic(s.box)
    fns = neighbors.neighbor_list(disp, 1.0, skin=0.1)
    x = jnp.stack([s.positions, s.positions])
    nbrs = fns.allocate(x)
    moved = x.at[1].add(0.08)  # only replica 1 moved past skin/2 ... but a uniform shift changes no pair
    moved = moved.at[1, 0].add(jnp.array([0.06, 0.0, 0.0]))
    new = jax.jit(jax.vmap(fns.update))(nbrs, moved)
    np.testing.assert_array_equal(new.rebuilds, [1, 1])
    for r in range(2):
        assert list_pairs(jax.tree.map(lambda a: a[r], new), s.n_atoms) >= brute_force_pairs(moved[r], np.asarray(s.box), 1.0)


def test_nested_vmap_rebuilds_every_list_together_with_one_condition(argon):
    """vmap over windows around vmap over a window's two halves: one replica moving past skin/2 rebuilds all
    four lists (a batched cond would rebuild only its own, evaluating both branches at every step)."""
    s, _, _ = argon
    fns = neighbors.neighbor_list(space.periodic(s.box), 1.0, skin=0.1)
    x = jnp.broadcast_to(s.positions, (2, 2) + s.positions.shape)
    nbrs = jax.tree.map(lambda a: jnp.broadcast_to(a, (2, 2) + a.shape), fns.allocate(s.positions))
    update = jax.jit(jax.vmap(jax.vmap(fns.update)))
    np.testing.assert_array_equal(update(nbrs, x).rebuilds, [[0, 0], [0, 0]])
    moved = x.at[1, 0, 0].add(jnp.array([0.06, 0.0, 0.0]))
    new = update(nbrs, moved)
    np.testing.assert_array_equal(new.rebuilds, [[1, 1], [1, 1]])
    assert list_pairs(jax.tree.map(lambda a: a[1, 0], new), s.n_atoms) >= brute_force_pairs(moved[1, 0], np.asarray(s.box), 1.0)
    assert "cond[" in str(jax.make_jaxpr(jax.vmap(jax.vmap(fns.update)))(nbrs, moved))


def test_all_pairs_list():
    fns = neighbors.all_pairs(5)
    nbrs = fns.allocate(jnp.zeros((5, 3)))
    assert list_pairs(nbrs, 5) == {(i, j) for i in range(5) for j in range(5) if i != j}


@pytest.mark.parametrize("mode", ["dense", "list"])
def test_cutoff_larger_than_half_box_is_refused(argon, mode):
    from dmd_dist.errors import InputError

    s, _, _ = argon
    with pytest.raises(InputError, match="potential.cutoff"):
        potentials.lennard_jones_potential(s, 0.34, 1.0, cutoff=1.2, neighbor_mode=mode)
