"""A repulsive wall for a network potential below the closest pair distances of its training data.

A message-passing network only knows the distances its training data contained.  Its radial features are
bounded (potentials/mpnn.py), so nothing in it keeps two atoms from coming closer than the teacher ever
let them: a tiny water network pre-trained on SPC/Fw frames lets a hydrogen-bonded pair of oxygens close to
0.2 nm around a shared proton (the teacher's closest O-O distance in 360 frames up to 900 K is 0.242 nm),
and the molecules then collapse and heat to 10^5 K within picoseconds (docs/results.md).  As ACE and
NequIP-style potentials do with their core repulsion, the model gets a fixed, untrained pair term that is
zero wherever the data went and steep below it:

    E_core = strength * sum over pairs with r < r_0 of (r_0 / r - 1)^3,

r_0 the closest distance of that pair of species in the pre-training frames (at most the network's
cutoff).  It is `strength` at r_0 / 2, and the energy and its first two derivatives vanish at r_0, so the
forces and the force derivatives the adjoint differentiates stay continuous.  Zero on the whole training
set, it leaves the fit alone; it only answers where the network extrapolates.  `pretrain.core_repulsion`
sets the strength; the radii are measured from the data and saved with the model.
"""

import dataclasses
import itertools

import jax.numpy as jnp
import numpy as np

from dmd_dist.space import minimum_image


@dataclasses.dataclass(frozen=True)
class CoreRepulsion:
    """The wall: `radii` (S, S) nm per pair of species (0: none), `strength` kJ/mol."""

    radii: tuple  # nested tuples, symmetric
    strength: float

    def atom_energies(self, graph, species):
        """(N,) per-atom shares (half of each pair's energy) on `graph` (a NeighborGraph: slots within the
        network's cutoff).  Coincident atoms (r = 0) get none: the graph gives them no direction either."""
        r0 = jnp.asarray(self.radii, graph.r.dtype)[species[:, None], graph.gather(species)]
        inside = graph.mask & (graph.r > 0) & (graph.r < r0)
        # Outside, r is replaced by 1 before dividing: r0 may be 0 there, and 0/0 in the discarded branch
        # would put NaN into derivatives of higher order.
        x = jnp.where(inside, r0 / jnp.where(inside, graph.r, 1.0) - 1.0, 0.0)
        return 0.5 * self.strength * jnp.sum(x * x * x, axis=1)

    def to_meta(self, species_names):
        """{"strength", "radii": {"A-B": nm}} for a checkpoint's meta (species by name)."""
        return {"strength": self.strength,
                "radii": {pair_name(species_names[a], species_names[b]): self.radii[a][b]
                          for a, b in itertools.combinations_with_replacement(range(len(species_names)), 2)}}

    @classmethod
    def from_meta(cls, meta, species_names):
        """The wall of a checkpoint's meta for a system's `species_names` (a pair the meta lacks: none)."""
        radii = [[meta["radii"].get(pair_name(a, b), 0.0) for b in species_names] for a in species_names]
        return cls(_nested(radii), float(meta["strength"]))


def pair_name(a, b):
    """One name per unordered pair of species: "H-O" for ("O", "H") and ("H", "O")."""
    return "-".join(sorted((a, b)))


def closest_distances(positions, box, species, n_species):
    """(S, S) nm: the closest minimum-image distance of each pair of species over frames `positions`
    (F, N, 3) in the orthorhombic `box`; inf for a pair that never occurs (one atom of a species)."""
    species = np.asarray(species)
    closest = np.full((n_species, n_species), np.inf)
    for x in np.asarray(positions, float):
        d = minimum_image(x[:, None, :] - x[None, :, :], np.asarray(box, float))
        r = np.sqrt(np.sum(d * d, axis=-1))
        np.fill_diagonal(r, np.inf)
        for a, b in itertools.combinations_with_replacement(range(n_species), 2):
            m = r[np.ix_(species == a, species == b)]
            if m.size:
                closest[a, b] = closest[b, a] = min(closest[a, b], float(m.min()))
    return closest


def core_from_data(positions, box, species, n_species, cutoff, strength):
    """The wall below the closest distances of the data (each at most `cutoff`; a pair never seen: none)."""
    closest = closest_distances(positions, box, species, n_species)
    return CoreRepulsion(_nested(np.where(np.isfinite(closest), np.minimum(closest, cutoff), 0.0)), float(strength))


def _nested(a):
    return tuple(tuple(float(v) for v in row) for row in np.asarray(a, float))
