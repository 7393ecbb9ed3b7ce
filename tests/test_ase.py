"""`dmd_dist.ase.Calculator`: the model of a run directory in ASE units, checked against dmd-dist's own
potentials, finite differences of its energy, permuted atoms and ASE's own Velocity Verlet.

The run directories are real CLI output, run side by side: a Lennard-Jones `train` of an argon-krypton
mixture (configs/tiny_argon_train.toml from a structure file, one iteration: two species, so that the
refined per-species parameters must be indexed in the run's species order) and an MPNN `pretrain` on
water frames from an extxyz file (two steps).  For SPC/Fw water, whose model is its config alone, the run
directory is the config.toml that `simulate` writes before it simulates (`dump_config` of the loaded
config, as `validate` prints it): the calculator reads nothing else, and the test saves a 30 s simulation.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import ase
import ase.io
import ase.units
import jax
import numpy as np
import pytest
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.stress import voigt_6_to_full_3x3_stress

from dmd_dist import systems
from dmd_dist.ase import EV, EV_PER_ANGSTROM, Calculator
from dmd_dist.assemble import build_potential
from dmd_dist.config import load_config
from dmd_dist.systems.builders import atomic_mass, box_edge
from dmd_dist.train.dataset import Dataset, write_dataset
from dmd_dist.units import ANGSTROM

ROOT = Path(__file__).resolve().parents[1]
LJ = ("Ar", "Kr")  # the mixture's species in the order of the run (first appearance in its file)
EDGE = box_edge(64 * atomic_mass("Ar"), density=1.374)  # tiny_argon_train.toml's box: 1.457 nm


def mixture(seed, noise=0.01):
    """32 Ar + 32 Kr on a 4x4x4 grid of the box (Ar first), jiggled by `noise` nm."""
    grid = (np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) * EDGE / 4
    species = np.arange(64) % 2
    positions = grid + np.random.default_rng(seed).normal(0, noise, grid.shape)
    return systems.make_system(positions, [atomic_mass(LJ[s]) for s in species], EDGE, species, LJ)


def water(seed, noise=0.003):
    """32 water molecules from dmd-dist's own builder (explicit topology), atoms jiggled off the lattice."""
    s = systems.water_lattice(32, 300.0, jax.random.PRNGKey(seed), density=1.0)
    return dataclasses.replace(s, positions=s.positions + np.random.default_rng(seed).normal(0, noise, (96, 3)))


def to_atoms(system):
    names = system.topology.species_names
    return ase.Atoms([names[i] for i in system.topology.species], positions=np.asarray(system.positions) / ANGSTROM,
                     cell=np.asarray(system.box) / ANGSTROM, pbc=True)


def sets(*overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"lj": train dir, "mpnn": pretrain dir, "water": config-only (simulate) dir}."""
    tmp = tmp_path_factory.mktemp("ase")
    ase.io.write(tmp / "mixture.extxyz", to_atoms(mixture(0)), format="extxyz")
    frames = [water(seed) for seed in range(4)]
    rng = np.random.default_rng(0)
    symbols = tuple(frames[0].topology.species_names[i] for i in frames[0].topology.species)
    write_dataset(tmp / "water.extxyz", Dataset(symbols, np.asarray(frames[0].box),
                                                np.stack([np.asarray(f.positions) for f in frames]),
                                                rng.normal(-3000, 10, 4), rng.normal(0, 300, (4, 96, 3)), [{}] * 4))
    (tmp / "pretrain.toml").write_text(f"""precision = "float64"
[system]
kind = "file"
path = "{tmp / 'water.extxyz'}"
[potential]
kind = "mpnn"
preset = "tiny"
cutoff = 0.4
skin = 0.05
[sampling]
temperature = 300.0
[pretrain]
data = "{tmp / 'water.extxyz'}"
val_fraction = 0.25
batch_size = 2
steps = 2
eval_every = 1
""")
    dirs = {k: tmp / k for k in ("lj", "mpnn", "water")}
    dmd = [sys.executable, "-m", "dmd_dist"]
    quiet = sets("output.progress=false")
    commands = {
        "lj": [*dmd, "train", ROOT / "configs/tiny_argon_train.toml", "--workdir", dirs["lj"], *quiet,
               *sets("system.kind=file", f"system.path={tmp / 'mixture.extxyz'}", "system.equilibration_steps=0",
                     "potential.sigma={Ar = 0.338, Kr = 0.36}", "potential.epsilon={Ar = 0.8938, Kr = 1.4}",
                     "potential.capacity_factor=1.5", "train.iterations=1", "sampling.equilibration_steps=0",
                     "sampling.frames=1", "segments.steps=10", "replicas.count=1")],
        "mpnn": [*dmd, "pretrain", tmp / "pretrain.toml", "--workdir", dirs["mpnn"], *quiet],
    }
    # Only the saved models matter here, not the runs' speed: XLA's unoptimised CPU code halves their compiling.
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip())
    procs = {k: subprocess.Popen([str(a) for a in c], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env) for k, c in commands.items()}
    r = subprocess.run([*dmd, "validate", str(ROOT / "configs/tiny_water.toml")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    dirs["water"].mkdir()
    (dirs["water"] / "config.toml").write_text(r.stdout)
    for k, p in procs.items():
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"{k}: {err[-3000:]}"
    return dirs


@pytest.fixture(scope="module")
def lj_calc(runs):
    return Calculator(runs["lj"])


def reference(run_dir, system, checkpoint=True):
    """dmd-dist's own (energy kJ/mol, forces kJ/mol/nm, params) of the run's model for `system`."""
    cfg = load_config(run_dir / "config.toml", [f"potential.checkpoint={run_dir}"] if checkpoint else [])
    potential, params = build_potential(cfg, system)
    nbrs = potential.neighbors.allocate(system.positions)
    e, f = jax.jit(lambda p, x, n: (potential.energy(p, x, n), potential.forces(p, x, n)))(params, system.positions, nbrs)
    return float(e), np.asarray(f), params


def check_matches(calc, run_dir, system, checkpoint=True):
    """The calculator's energy and forces for `system` are dmd-dist's own, in eV and eV/A; returns the atoms."""
    atoms = to_atoms(system)
    atoms.calc = calc
    e, f, params = reference(run_dir, system, checkpoint)
    np.testing.assert_allclose(atoms.get_potential_energy(), e * EV, rtol=1e-10)
    f = f * EV_PER_ANGSTROM
    np.testing.assert_allclose(atoms.get_forces(), f, rtol=1e-10, atol=1e-10 * np.abs(f).max())
    return atoms, params


def check_fd_forces(atoms, components, h=1e-4, rtol=1e-6):
    """A few force components against minus the central difference of the energy (eV/A)."""
    forces = atoms.get_forces()
    for i, k in components:
        shifted = []
        for sign in (1, -1):
            a = atoms.copy()
            a.positions[i, k] += sign * h
            shifted.append(atoms.calc.get_potential_energy(a))
        assert forces[i, k] == pytest.approx(-(shifted[0] - shifted[1]) / (2 * h), abs=rtol * np.abs(forces).max())


def test_lennard_jones_train_run_gives_its_refined_model(runs, lj_calc):
    system = mixture(1)
    atoms, params = check_matches(lj_calc, runs["lj"], system)
    start = load_config(runs["lj"] / "config.toml").potential  # the config's parameters, before training
    for name, initial in (("sigma", start.sigma), ("epsilon", start.epsilon)):
        refined = np.asarray(params["lj"][name])
        assert np.all(refined != [initial[s] for s in LJ]), name  # the checkpoint's, not the config's
    e_initial, _, _ = reference(runs["lj"], system, checkpoint=False)
    assert abs(atoms.get_potential_energy() - e_initial * EV) > 1e-6 * abs(e_initial * EV)
    check_fd_forces(atoms, [(0, 0), (5, 1), (63, 2)])


def test_lennard_jones_model_for_atoms_in_another_order(runs, lj_calc):
    atoms = to_atoms(mixture(2))
    atoms.calc = lj_calc
    perm = np.random.default_rng(0).permutation(64)
    perm = np.concatenate([perm[atoms.numbers[perm] == 36], perm[atoms.numbers[perm] == 18]])  # Kr first
    reordered = atoms[perm]  # species appear as (Kr, Ar): the per-species parameters are still (Ar, Kr)'s
    reordered.calc = Calculator(runs["lj"])  # of its own: new numbers would rebuild (and recompile) lj_calc
    np.testing.assert_allclose(reordered.get_potential_energy(), atoms.get_potential_energy(), rtol=1e-12)
    np.testing.assert_allclose(reordered.get_forces(), atoms.get_forces()[perm], rtol=1e-9, atol=1e-10)


def test_lennard_jones_stress_is_the_strain_derivative_of_the_energy(runs, lj_calc):
    atoms = to_atoms(mixture(3))
    atoms.calc = lj_calc
    stress = atoms.get_stress()  # xx yy zz yz xz xy
    full = voigt_6_to_full_3x3_stress(stress)
    assert np.abs(full - np.diag(np.diag(full))).max() > 1e-2 * np.abs(full).max()  # shear is there to test
    # xx against the central difference of the energy under strain (a new cell each: a calculator of its own).
    h, strained = 1e-5, Calculator(runs["lj"])
    energies = []
    for sign in (1, -1):
        a = atoms.copy()
        a.set_cell(a.cell[:] @ np.diag([1 + sign * h, 1, 1]), scale_atoms=True)
        energies.append(strained.get_potential_energy(a))
    assert stress[0] == pytest.approx((energies[0] - energies[1]) / (2 * h) / atoms.get_volume(), rel=1e-6)
    # The other components (and the Voigt order) by turning the cubic box's content 90 degrees about z and
    # about x: the stress tensor turns with it, s' = R s R^T.
    for rot in ([[0, -1, 0], [1, 0, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, -1], [0, 1, 0]]):
        rot = np.array(rot, float)
        turned = atoms.copy()
        turned.positions = atoms.positions @ rot.T
        np.testing.assert_allclose(voigt_6_to_full_3x3_stress(lj_calc.get_stress(turned)), rot @ full @ rot.T,
                                   rtol=0, atol=1e-10 * np.abs(full).max())


def test_mpnn_pretrain_run_gives_its_model(runs):
    atoms, _ = check_matches(Calculator(runs["mpnn"]), runs["mpnn"], water(7))
    check_fd_forces(atoms, [(0, 0), (1, 2), (50, 1)])


def test_spc_fw_run_gives_its_model_with_hydrogens_first(runs):
    assert not (runs["water"] / "checkpoints").exists()  # the config alone defines the model
    calc = Calculator(runs["water"])
    atoms, _ = check_matches(calc, runs["water"], water(8), checkpoint=False)
    check_fd_forces(atoms, [(0, 0), (1, 1), (95, 2)], h=1e-5)
    symbols = np.array(atoms.get_chemical_symbols())
    perm = np.concatenate([np.flatnonzero(symbols == "H"), np.flatnonzero(symbols == "O")])
    hydrogens_first = atoms[perm]  # molecules and bonds must be found again in the new order
    hydrogens_first.calc = calc
    np.testing.assert_allclose(hydrogens_first.get_potential_energy(), atoms.get_potential_energy(), rtol=1e-12)
    np.testing.assert_allclose(hydrogens_first.get_forces(), atoms.get_forces()[perm], rtol=1e-9, atol=1e-10)


def test_ase_velocity_verlet_conserves_energy(lj_calc):
    atoms = to_atoms(mixture(4))
    atoms.calc = lj_calc
    thermalize_momenta(atoms, temperature_K=94.4, rng=np.random.default_rng(0))
    totals = []
    md = VelocityVerlet(atoms, timestep=2 * ase.units.fs)
    md.attach(lambda: totals.append(atoms.get_potential_energy() + atoms.get_kinetic_energy()), interval=1)
    md.run(20)
    drift = np.abs(np.array(totals) - totals[0]).max() / atoms.get_kinetic_energy()
    print(f"\nVelocity Verlet, 20 x 2 fs: max |E - E0| / E_kin = {drift:.2e}")
    assert len(totals) == 21 and drift < 1e-3  # measured 2.6e-5


def test_neighbor_list_follows_moving_atoms_and_grows_when_it_overflows(runs, lj_calc):
    atoms = to_atoms(mixture(5, noise=0.002))
    # No headroom: on a near-perfect grid every atom has the list's capacity of neighbours, so moving one
    # atom half a grid spacing (a rebuild) gives some atom one more than the list holds.
    calc = Calculator(runs["lj"], overrides=["potential.capacity_factor=1.0"])
    calc.get_forces(atoms)
    capacity = calc._nbrs.capacity
    atoms.positions[0] += [0.5 * atoms.cell[0, 0] / 4, 0, 0]
    forces = calc.get_forces(atoms)
    assert calc._nbrs.capacity > capacity  # overflowed and grown
    np.testing.assert_allclose(forces, lj_calc.get_forces(atoms), rtol=1e-10, atol=1e-12)


def test_refuses_what_it_cannot_compute(runs, tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}.*not a dmd-dist run directory"):
        Calculator(tmp_path)
    calc = Calculator(runs["lj"])
    with pytest.raises(ValueError, match="not Ne"):
        calc.get_potential_energy(ase.Atoms("ArNe", positions=[[0, 0, 0], [3, 0, 0]], cell=[15, 15, 15], pbc=True))
    skewed = ase.Atoms("Ar2", positions=[[0, 0, 0], [3, 0, 0]], cell=[[15, 0, 0], [3, 15, 0], [0, 0, 15]], pbc=True)
    with pytest.raises(ValueError, match="periodic orthorhombic"):
        calc.get_potential_energy(skewed)
