"""dmd-dist: differentiable molecular dynamics for refining potentials against dynamical data.

The public API, in one place (the README's library example uses only these names).  Submodules hold one
concept each; docs/architecture.md maps them.

- Systems and potentials: `lattice_fluid`, `water_lattice`, `from_file`, `systems.prepare`;
  `lennard_jones_potential`, `morse_potential`, `spc_fw_potential`, `mpnn_potential`.
- Dynamics: `Dynamics`, `leapfrog`, `langevin_baoab`, `langevin_sampler`, `init_chains`.
- Windows and their gradients: `Segment`, `run_segment`, `run_window` with `DirectAdjoint`,
  `ReverseTimeAdjoint` or `CheckpointAdjoint`; records from `recorder(channels, ...)` (`CHANNELS`) with
  the start frame as `frame_context`; the truncation window from `gradient_growth` / `suggest_window`.
- Observables: `green_kubo_diffusion`, `einstein_diffusion`, `ir_spectrum`, `dipole_derivative_acf`,
  `vibrational_dos`, `radial_distribution`, `pressure_tensor` (more in `dmd_dist.observables`).
- Commands as functions: `simulate`, `train`, `pretrain`, `gradcheck`, from a `Config` (`load_config`);
  `build_objective` and `make_optimizer` are the pieces `train` is made of; `ensemble_gradient` checks the
  training gradient against finite differences of the ensemble.
"""

from dmd_dist import ensemble_gradient, integrators, neighbors, observables, potentials, space, systems, units
from dmd_dist.adjoint import CheckpointAdjoint, DirectAdjoint, ReverseTimeAdjoint, Segment, run_segment
from dmd_dist.assemble import build, build_potential, build_system, set_precision
from dmd_dist.config import Config, load_config
from dmd_dist.driver import OverflowCounter, run_checked, scan_steps
from dmd_dist.errors import InputError
from dmd_dist.gradcheck import gradcheck
from dmd_dist.integrators import Dynamics, MDState, langevin_baoab, leapfrog, velocity_verlet
from dmd_dist.neighbors import NeighborList, all_pairs, choose_neighbors, neighbor_list
from dmd_dist.observables import (dipole_derivative_acf, einstein_diffusion, green_kubo_diffusion, ir_spectrum,
                                  pressure_tensor, radial_distribution, vibrational_dos)
from dmd_dist.potentials import lennard_jones_potential, morse_potential, mpnn_potential, spc_fw_potential
from dmd_dist.records import CHANNELS, frame_context, recorder
from dmd_dist.sampler import init_chains, langevin_sampler
from dmd_dist.segments import Window, run_window
from dmd_dist.simulate import simulate
from dmd_dist.systems import System, from_file, lattice_fluid, water_lattice
from dmd_dist.train.objective import build_objective
from dmd_dist.train.optimizer import make_optimizer
from dmd_dist.train.pretrain import pretrain
from dmd_dist.train.trainer import train
from dmd_dist.window import gradient_growth, suggest_window

__version__ = "0.1.0"

__all__ = [
    "ensemble_gradient", "integrators", "neighbors", "observables", "potentials", "space", "systems", "units",
    "System", "lattice_fluid", "water_lattice", "from_file",
    "lennard_jones_potential", "morse_potential", "spc_fw_potential", "mpnn_potential",
    "NeighborList", "all_pairs", "neighbor_list", "choose_neighbors",
    "Dynamics", "MDState", "leapfrog", "velocity_verlet", "langevin_baoab", "langevin_sampler", "init_chains",
    "OverflowCounter", "run_checked", "scan_steps",
    "Segment", "run_segment", "DirectAdjoint", "ReverseTimeAdjoint", "CheckpointAdjoint", "Window", "run_window",
    "CHANNELS", "recorder", "frame_context", "gradient_growth", "suggest_window",
    "green_kubo_diffusion", "einstein_diffusion", "ir_spectrum", "dipole_derivative_acf", "vibrational_dos",
    "radial_distribution", "pressure_tensor",
    "Config", "load_config", "build", "build_potential", "build_system", "set_precision", "InputError",
    "simulate", "train", "pretrain", "gradcheck", "build_objective", "make_optimizer",
]
