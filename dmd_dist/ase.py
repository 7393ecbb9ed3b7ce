"""The model of a dmd-dist run directory as an ASE calculator: energies, forces and stress in ASE units.

A refined potential can then be used wherever ASE is (ASE's own MD, optimisers, phonons, ...)::

    import ase.io, ase.units
    from ase.md.verlet import VelocityVerlet
    from dmd_dist.ase import Calculator

    atoms = ase.io.read("water.extxyz")             # periodic orthorhombic cell
    atoms.calc = Calculator("runs/water_refine")    # any simulate, train or pretrain run directory
    VelocityVerlet(atoms, timestep=0.5 * ase.units.fs).run(100)

The model of a run is its config.toml and, where the run saved checkpoints (train, pretrain), the parameters
of the latest one: the same model `potential.checkpoint = <run dir>` gives inside dmd-dist.  Units: eV, eV/A,
eV/A^3; stress = (1/V) dE/dstrain (ASE's sign), Voigt order xx yy zz yz xz xy, without the kinetic part.
"""

import json
from pathlib import Path

import ase.calculators.calculator as ase_calculator
import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from dmd_dist.assemble import build_potential, build_system, set_precision
from dmd_dist.config import load_config
from dmd_dist.neighbors import grown_capacity
from dmd_dist.potentials.pretrained import saved_meta
from dmd_dist.systems.builders import infer_topology, orthorhombic_box
from dmd_dist.systems.system import make_system
from dmd_dist.units import ANGSTROM

EV = units.kJ / units.mol  # eV per kJ/mol
EV_PER_ANGSTROM = EV * ANGSTROM  # eV/A per kJ/(mol nm)
EV_PER_ANGSTROM3 = EV * ANGSTROM**3  # eV/A^3 per kJ/(mol nm^3)


def model_config(run_dir, overrides=()):
    """(config, species names) of the model of `run_dir`: its config.toml, with `potential.checkpoint` set to
    the run itself when it holds a train or pretrain checkpoint; `overrides` ("key=value") come last."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "config.toml").is_file():
        raise ValueError(f"{run_dir} is not a dmd-dist run directory (no config.toml)")
    meta = {}
    if (run_dir / "checkpoints").is_dir():
        meta = saved_meta(run_dir)
        # A train run of an MPNN names its pretrain run here: point at the train run, whose parameters are
        # the refined ones.  A pretrain run's [potential] is the student, which its checkpoints hold.
        overrides = [f"potential.checkpoint={json.dumps(str(run_dir))}", *overrides]
    cfg = load_config(run_dir / "config.toml", overrides)
    set_precision(cfg.precision)  # before any array is created: float64 runs need jax x64
    # Per-species parameters are indexed in the run's species order: the checkpoint's, else the run's system's.
    names = meta.get("species_names") or build_system(cfg, jax.random.PRNGKey(0)).topology.species_names
    return cfg, tuple(names)


class Calculator(ase_calculator.Calculator):
    """ASE calculator for the model of a dmd-dist run directory (see the module docstring).

    `overrides`: config overrides ("key=value", as `--set`), e.g. "precision=float64" or
    "potential.neighbor_list=dense".  The precision is the run's (a global JAX setting: x64 on or off).
    The cell must be periodic and orthorhombic.  The box is a constant of a dmd-dist potential, so new
    numbers or a new cell rebuild and recompile the model (about a second): cheap for MD at a fixed
    cell, slow for a barostat that changes the cell every step.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, run_dir, overrides=(), **kwargs):
        super().__init__(**kwargs)
        self.run_dir = Path(run_dir)
        self.cfg, self.species_names = model_config(run_dir, overrides)
        self._model = None  # (potential, params, jitted evaluate) for the current numbers and cell
        self._nbrs = None

    def _build(self, atoms):
        """Potential and parameters for these atoms and this cell (the box is a constant of the potential)."""
        box = orthorhombic_box(atoms)
        if box is None:
            raise ValueError("dmd_dist.ase.Calculator needs a periodic orthorhombic cell, got "
                             f"{atoms.cell[:].tolist()} with pbc {atoms.pbc.tolist()}")
        symbols = atoms.get_chemical_symbols()
        unknown = sorted(set(symbols) - set(self.species_names))
        if unknown:
            raise ValueError(f"the model of {self.run_dir} knows species {list(self.species_names)}, "
                             f"not {', '.join(unknown)}")
        species = [self.species_names.index(s) for s in symbols]
        # A lattice fluid is atoms without bonds; other runs (water box, structure file) inferred their
        # molecules, which bonded terms and intramolecular exclusions use, from covalent radii, as here.
        topology = (None, None, None) if self.cfg.system.kind == "lj_fluid" else infer_topology(atoms)
        system = make_system(atoms.positions * ANGSTROM, atoms.get_masses(), box, species,
                             self.species_names, *topology)
        potential, params = build_potential(self.cfg, system)

        def evaluate(params, positions, nbrs, stress):
            nbrs = potential.neighbors.update(nbrs, positions)
            e = potential.energy(params, positions, nbrs)
            f = potential.forces(params, positions, nbrs)
            w = potential.virial(params, positions, nbrs) if stress else jnp.zeros((3, 3), positions.dtype)
            return e, f, w, nbrs

        self._model = potential, params, jax.jit(evaluate, static_argnums=3)
        self._nbrs = potential.neighbors.allocate(system.positions)

    def calculate(self, atoms=None, properties=("energy",), system_changes=ase_calculator.all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if self._model is None or {"numbers", "cell", "pbc"} & set(system_changes):
            self._build(atoms)
        potential, params, evaluate = self._model
        positions = jnp.asarray(atoms.positions * ANGSTROM)  # unwrapped or wrapped: displacements are minimum-image
        stress = "stress" in properties
        e, f, w, nbrs = evaluate(params, positions, self._nbrs, stress)
        if bool(nbrs.overflow):  # the list missed pairs: discard, grow it from this configuration, redo
            capacity = grown_capacity(int(nbrs.max_count), self.cfg.potential.capacity_factor)
            self._nbrs = potential.neighbors.allocate(positions, capacity=capacity)
            e, f, w, nbrs = evaluate(params, positions, self._nbrs, stress)
        self._nbrs = nbrs
        energy = float(e) * EV
        self.results = {"energy": energy, "free_energy": energy, "forces": np.asarray(f, float) * EV_PER_ANGSTROM}
        if stress:
            # W = -dU/d(strain), so stress = -W/V; the virial is symmetric up to rounding: symmetrise.
            volume = float(np.prod(np.diag(atoms.cell[:]))) * ANGSTROM**3
            s = -0.5 * (np.asarray(w, float) + np.asarray(w, float).T) / volume * EV_PER_ANGSTROM3
            self.results["stress"] = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
