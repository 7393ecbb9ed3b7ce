from dmd_dist.systems.builders import (equilibrate, from_file, lattice_fluid, minimize, prepare, water_lattice)
from dmd_dist.systems.system import System, Topology, make_system, maxwell_boltzmann

__all__ = ["System", "Topology", "make_system", "maxwell_boltzmann", "lattice_fluid", "water_lattice", "from_file",
           "minimize", "equilibrate", "prepare"]
