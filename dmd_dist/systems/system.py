"""The System pytree: positions, velocities, masses and box (arrays) plus a static Topology."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist.units import AMU_PER_NM3_TO_G_PER_CM3, BOLTZMANN


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """Everything about a system that is not an array of numbers to integrate: static under jit.

    Hashable by content so that it can live in a pytree's static part.
    """

    species: np.ndarray  # (N,) int32 index into species_names
    species_names: tuple
    molecule: np.ndarray  # (N,) int32 molecule index, 0..n_molecules-1
    bonds: np.ndarray  # (B, 2) int32
    angles: np.ndarray  # (A, 3) int32, the centre atom in the middle

    def _key(self):
        return (self.species_names,) + tuple((a.shape, a.tobytes()) for a in
                                             (self.species, self.molecule, self.bonds, self.angles))

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, Topology) and self._key() == other._key()

    @property
    def n_atoms(self) -> int:
        return len(self.species)

    @property
    def n_molecules(self) -> int:
        return int(self.molecule.max(initial=-1)) + 1


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class System:
    positions: jax.Array  # (N, 3) nm, molecules whole
    velocities: jax.Array  # (N, 3) nm/ps
    masses: jax.Array  # (N,) amu
    box: jax.Array  # (3,) nm, orthorhombic
    topology: Topology = dataclasses.field(metadata=dict(static=True))

    @property
    def n_atoms(self) -> int:
        return self.topology.n_atoms

    @property
    def volume(self) -> float:
        return float(np.prod(np.asarray(self.box)))

    @property
    def density(self) -> float:
        """Mass density in g/cm^3."""
        return float(np.sum(np.asarray(self.masses))) / self.volume * AMU_PER_NM3_TO_G_PER_CM3

    @property
    def degrees_of_freedom(self) -> int:
        """3N - 3: the centre-of-mass velocity is removed by every integrator by default."""
        return 3 * self.n_atoms - 3


def make_system(positions, masses, box, species, species_names, molecule=None, bonds=None, angles=None,
                velocities=None):
    n = len(species)
    topology = Topology(
        species=np.asarray(species, np.int32),
        species_names=tuple(species_names),
        molecule=np.asarray(np.arange(n) if molecule is None else molecule, np.int32),
        bonds=np.asarray(np.zeros((0, 2)) if bonds is None else bonds, np.int32).reshape(-1, 2),
        angles=np.asarray(np.zeros((0, 3)) if angles is None else angles, np.int32).reshape(-1, 3),
    )
    return System(
        positions=jnp.asarray(positions, float),
        velocities=jnp.zeros((n, 3)) if velocities is None else jnp.asarray(velocities, float),
        masses=jnp.asarray(masses, float),
        box=jnp.asarray(np.broadcast_to(np.asarray(box, float), (3,))),
        topology=topology,
    )


def maxwell_boltzmann(key, masses, temperature, remove_com=True):
    """Velocities (nm/ps) drawn at `temperature` (K); centre-of-mass motion removed."""
    v = jax.random.normal(key, (masses.shape[0], 3)) * jnp.sqrt(BOLTZMANN * temperature / masses)[:, None]
    if remove_com:
        v = v - jnp.sum(masses[:, None] * v, 0) / jnp.sum(masses)
    return v
