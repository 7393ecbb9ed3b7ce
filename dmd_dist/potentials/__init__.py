"""Potentials for systems: factories that wire a System's box and topology into a potential.

Each returns `(potential, params)`; params is the differentiable pytree, `potential.default_params()`.
"""

from dmd_dist import space
from dmd_dist.errors import InputError
from dmd_dist.neighbors import choose_neighbors
from dmd_dist.potentials.base import Potential
from dmd_dist.potentials.classical import (ClassicalPotential, damped_shifted_force_coulomb, harmonic_angles,
                                           harmonic_bonds, lennard_jones, morse)
from dmd_dist.potentials.water import SPC_FW
from dmd_dist.potentials.dipole import LearnedDipole, fixed_charge_dipole, learned_dipole
from dmd_dist.potentials.mpnn import PRESETS as MPNN_PRESETS
from dmd_dist.potentials.mpnn import MPNNPotential, mpnn_potential
from dmd_dist.potentials.species import per_species


def lennard_jones_potential(system, sigma, epsilon, cutoff, skin=0.1, neighbor_mode="auto", shift=False,
                            capacity_factor=1.25, switch_onset=None):
    neighbors = choose_neighbors(system, cutoff, skin, neighbor_mode, capacity_factor)
    term = lennard_jones(per_species(sigma, system, "potential.sigma"), per_species(epsilon, system, "potential.epsilon"),
                         cutoff, shift, _onset(switch_onset, cutoff))
    pot = ClassicalPotential(space.periodic(system.box), neighbors, system.topology.species, [term],
                             molecule=system.topology.molecule, exclude_intramolecular=True)
    return pot, pot.default_params()


def _onset(switch_onset, cutoff):
    if switch_onset is not None and not 0 < switch_onset < cutoff:
        raise InputError("potential.switch_onset", f"{switch_onset} nm must lie between 0 and the cutoff {cutoff} nm")
    return switch_onset


def morse_potential(system, depth, alpha, r0, cutoff, skin=0.1, neighbor_mode="auto", shift=False,
                    capacity_factor=1.25, switch_onset=None):
    neighbors = choose_neighbors(system, cutoff, skin, neighbor_mode, capacity_factor)
    term = morse(per_species(depth, system, "potential.depth"), per_species(alpha, system, "potential.alpha"),
                 per_species(r0, system, "potential.r0"), cutoff, shift, _onset(switch_onset, cutoff))
    pot = ClassicalPotential(space.periodic(system.box), neighbors, system.topology.species, [term],
                             molecule=system.topology.molecule, exclude_intramolecular=True)
    return pot, pot.default_params()


def spc_fw_potential(system, cutoff=0.9, skin=0.1, coulomb_alpha=2.0, neighbor_mode="auto", capacity_factor=1.25,
                     switch_onset=None):
    """Flexible SPC/Fw-like water (see potentials/water.py) for a system of O and H.  `switch_onset`: the
    O-O Lennard-Jones is switched off smoothly from there to the cutoff (its forces then are continuous, as
    the damped shifted-force Coulomb's are anyway)."""
    names = system.topology.species_names
    if set(names) != {"O", "H"}:
        raise InputError("potential.kind", f"spc_fw needs a system of O and H, got species {list(names)}")
    top = system.topology
    if len(top.bonds) != 2 * (system.n_atoms // 3) or top.n_molecules * 3 != system.n_atoms:
        raise InputError("system", "spc_fw needs whole water molecules (3 atoms, 2 O-H bonds each)")
    p = SPC_FW
    neighbors = choose_neighbors(system, cutoff, skin, neighbor_mode, capacity_factor)
    lj = lennard_jones(per_species({"O": p["sigma_o"], "H": 0.1}, system, ""),  # H: epsilon 0, sigma unused
                       per_species({"O": p["epsilon_o"], "H": 0.0}, system, ""), cutoff, shift=True,
                       switch_onset=_onset(switch_onset, cutoff))
    coulomb = damped_shifted_force_coulomb(per_species({"O": p["charge_o"], "H": p["charge_h"]}, system, ""),
                                           cutoff, coulomb_alpha)
    pot = ClassicalPotential(space.periodic(system.box), neighbors, top.species, [lj, coulomb],
                             [harmonic_bonds(top.bonds, p["k_bond"], p["r_oh"]),
                              harmonic_angles(top.angles, p["k_angle"], p["theta_hoh"])],
                             molecule=top.molecule, exclude_intramolecular=True)
    return pot, pot.default_params()


__all__ = ["Potential", "ClassicalPotential", "choose_neighbors", "lennard_jones_potential", "morse_potential",
           "spc_fw_potential", "per_species", "MPNNPotential", "mpnn_potential", "MPNN_PRESETS", "LearnedDipole",
           "learned_dipole", "fixed_charge_dipole"]
