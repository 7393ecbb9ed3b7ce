"""dmd-dist: differentiable molecular dynamics for refining potentials against dynamical data.

The public API, in one place.  Submodules hold one concept each.
"""

from dmd_dist import integrators, neighbors, potentials, space, systems, units
from dmd_dist.assemble import build, build_potential, build_system, set_precision
from dmd_dist.driver import OverflowCounter, run_checked, scan_steps
from dmd_dist.errors import InputError
from dmd_dist.integrators import Dynamics, MDState, langevin_baoab, leapfrog, velocity_verlet
from dmd_dist.neighbors import NeighborList, all_pairs, neighbor_list
from dmd_dist.potentials import lennard_jones_potential, morse_potential, spc_fw_potential
from dmd_dist.simulate import simulate
from dmd_dist.systems import System, from_file, lattice_fluid, water_lattice
from dmd_dist.config import Config, load_config

__version__ = "0.1.0"

__all__ = [
    "integrators", "neighbors", "potentials", "space", "systems", "units",
    "build", "build_potential", "build_system", "set_precision",
    "OverflowCounter", "run_checked", "scan_steps", "InputError",
    "Dynamics", "MDState", "langevin_baoab", "leapfrog", "velocity_verlet",
    "NeighborList", "all_pairs", "neighbor_list",
    "lennard_jones_potential", "morse_potential", "spc_fw_potential",
    "simulate", "System", "from_file", "lattice_fluid", "water_lattice", "Config", "load_config",
]
