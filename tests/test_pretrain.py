"""`dmd-dist pretrain`: energy and force matching of the MPNN to a classical teacher or an extxyz file.

The accuracy tests run the CLI on the shipped configs made CI-sized by `--set` (fewer frames and steps,
a shorter-ranged argon teacher) and assert on the measured `pretrain_report.json`; the others check the
extxyz reader and writer, pre-training from a file, exact resume after SIGTERM and kill -9, refused bad
input and loading the result through `potential.checkpoint`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from dmd_dist import checkpoint
from dmd_dist.potentials.core import CoreRepulsion, closest_distances
from dmd_dist.potentials.pretrained import load_pretrained
from dmd_dist.train.dataset import EV, EV_PER_ANGSTROM, Dataset, read_dataset, write_dataset
from dmd_dist.units import ANGSTROM

ROOT = Path(__file__).resolve().parents[1]
ARGON = ROOT / "configs/argon_mpnn_pretrain.toml"
WATER = ROOT / "configs/water_mpnn_pretrain.toml"
QUIET = ["--set", "output.progress=false"]
# The argon config at CI size: half the preparation, 500 instead of 800 steps.
ARGON_CI = ["system.equilibration_steps=1000", "pretrain.steps=500"]
# The water config at CI size: half the preparation, 4000 instead of 5000 steps.
WATER_CI = ["system.equilibration_steps=500", "pretrain.steps=4000"]


def sets(*overrides):
    return [a for o in overrides for a in ("--set", o)]


def command(config, workdir, *overrides):
    return [sys.executable, "-m", "dmd_dist", "pretrain", str(config), "--workdir", str(workdir), *QUIET,
            *sets(*overrides)]


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


def pretrain(config, workdir, *overrides):
    return subprocess.run(command(config, workdir, *overrides), capture_output=True, text=True, env=env(),
                          timeout=600)


def report(workdir):
    return json.loads((Path(workdir) / "pretrain_report.json").read_text())


def metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def argon_run(tmp_path_factory):
    """The CI-sized argon pre-training: (workdir, seconds)."""
    work = tmp_path_factory.mktemp("argon") / "run"
    t0 = time.perf_counter()
    r = pretrain(ARGON, work, *ARGON_CI)
    assert r.returncode == 0, r.stderr[-3000:]
    return work, time.perf_counter() - t0


def _check_accuracy(work, seconds):
    rep = report(work)
    print(f"\n{work.name}: val_force_rmse {rep['val_force_rmse']:.4g} kJ/mol/nm, teacher_force_std "
          f"{rep['teacher_force_std']:.4g}, ratio {rep['val_force_rmse_over_teacher_force_std']:.4f}, "
          f"val_energy_mae_per_atom {rep['val_energy_mae_per_atom']:.3g} kJ/mol, {seconds:.0f} s")
    for key in ("val_force_rmse", "val_energy_mae_per_atom", "teacher_force_std", "train_force_rmse"):
        assert np.isfinite(rep[key]) and rep[key] >= 0
    assert rep["units"]["force"] == "kJ/mol/nm"
    assert rep["val_force_rmse"] < 0.1 * rep["teacher_force_std"]
    ratio = rep["val_force_rmse"] / rep["teacher_force_std"]
    assert rep["val_force_rmse_over_teacher_force_std"] == pytest.approx(ratio)
    rows = metrics(work)
    assert rows[-1]["step"] == rep["steps"] and rows[-1]["val_force_rmse"] == pytest.approx(rep["val_force_rmse"])
    assert rows[-1]["val_force_rmse"] < rows[0]["val_force_rmse"]
    return rep


def test_lennard_jones_teacher_is_matched_to_ten_percent_of_its_force_spread(argon_run):
    rep = _check_accuracy(*argon_run)
    assert rep["n_frames"] == 80 and rep["n_val"] == 16 and rep["source"] == "teacher lennard_jones"
    # Energies per atom: well inside the teacher's own spread of energies per atom.
    assert rep["val_energy_mae_per_atom"] < 0.5 * rep["teacher_energy_std_per_atom"]


def test_flexible_water_teacher_is_matched_to_ten_percent_of_its_force_spread(tmp_path):
    work = tmp_path / "water"
    t0 = time.perf_counter()
    r = pretrain(WATER, work, *WATER_CI)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = _check_accuracy(work, time.perf_counter() - t0)
    assert set(rep["val_force_rmse_by_species"]) == {"O", "H"}
    assert rep["source"] == "teacher spc_fw"
    # The config's core repulsion: its radii are the data's closest pairs, saved with the model and loaded
    # with it by `potential.checkpoint`.
    ds = read_dataset(work / "dataset.extxyz")
    species = np.array([("O", "H").index(s) for s in ds.symbols])
    closest = closest_distances(ds.positions, ds.box, species, 2)
    saved = checkpoint.latest_meta(work / "checkpoints")[1]["core"]
    assert saved["strength"] == 1e5 and 0.2 < closest[0, 0] < 0.3 and 0.08 < closest[0, 1] < 0.1
    np.testing.assert_allclose([saved["radii"][k] for k in ("O-O", "H-O", "H-H")],
                               [closest[0, 0], closest[0, 1], closest[1, 1]], rtol=1e-12)
    from dmd_dist import assemble
    from dmd_dist.config import load_config

    cfg = load_config(WATER, [*WATER_CI, f"potential.checkpoint={work}"])
    system = assemble.build_system(cfg, jax.random.PRNGKey(0))
    core = assemble.build_potential(cfg, system)[0].core
    assert core == CoreRepulsion.from_meta(saved, list(system.topology.species_names)) and core.strength == 1e5


# -- extxyz --------------------------------------------------------------------------------------------


def _random_dataset(n_frames=3, seed=0):
    rng = np.random.default_rng(seed)
    box = np.array([1.1, 1.2, 1.3])
    symbols = ("O", "H", "H", "Ar")
    return Dataset(symbols, box, rng.uniform(0, 1.1, (n_frames, 4, 3)), rng.normal(-500, 50, n_frames),
                      rng.normal(0, 300, (n_frames, 4, 3)),
                      [{"chain": i, "temperature": 300.0} for i in range(n_frames)])


def test_extxyz_round_trip_is_exact_and_in_ase_units(tmp_path):
    ds = _random_dataset()
    path = tmp_path / "data.extxyz"
    write_dataset(path, ds)
    frames = ase.io.read(path, ":")  # ASE reads it: Angstrom, eV, eV/Angstrom
    assert len(frames) == ds.n_frames
    for i, atoms in enumerate(frames):
        assert atoms.get_chemical_symbols() == list(ds.symbols) and atoms.pbc.all()
        np.testing.assert_array_equal(np.diag(atoms.cell[:]), ds.box / ANGSTROM)
        np.testing.assert_array_equal(atoms.get_positions(), ds.positions[i] / ANGSTROM)
        assert atoms.get_potential_energy() == ds.energies[i] / EV
        np.testing.assert_array_equal(atoms.get_forces(), ds.forces[i] / EV_PER_ANGSTROM)
        assert atoms.info["chain"] == i
    back = read_dataset(path)
    assert back.symbols == ds.symbols
    for name in ("box", "positions", "energies", "forces"):
        np.testing.assert_allclose(getattr(back, name), getattr(ds, name), rtol=1e-15, atol=0)
    # Written again, the file is the same byte for byte: what is read is what was written.
    write_dataset(tmp_path / "again.extxyz", back)
    assert (tmp_path / "again.extxyz").read_text() == path.read_text()


def test_read_dataset_converts_an_ase_written_file_from_ev(tmp_path):
    atoms = ase.Atoms("Ar2", positions=[[0, 0, 0], [3.5, 0, 0]], cell=[10, 11, 12], pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=[[0.5, 0, 0], [-0.5, 0, 0]])
    ase.io.write(tmp_path / "ase.extxyz", [atoms], format="extxyz")
    ds = read_dataset(tmp_path / "ase.extxyz")
    assert ds.symbols == ("Ar", "Ar")
    np.testing.assert_allclose(ds.box, [1.0, 1.1, 1.2])
    np.testing.assert_allclose(ds.positions[0, 1], [0.35, 0, 0])
    assert ds.energies[0] == pytest.approx(-96.4853, rel=1e-5)  # kJ/mol per eV
    assert ds.forces[0, 0, 0] == pytest.approx(0.5 * 964.853, rel=1e-5)  # kJ/mol/nm per eV/Angstrom


# -- pre-training from a file, resume, bad input, loading ----------------------------------------------


def data_config(tmp_path, data, steps=100, eval_every=10):
    """A config that pre-trains the argon student on an extxyz file."""
    path = tmp_path / "from_file.toml"
    path.write_text(f"""seed = 3
precision = "float32"
[system]
kind = "file"
path = "{data}"
[potential]
kind = "mpnn"
preset = "tiny"
cutoff = 0.6
skin = 0.05
[sampling]
temperature = 94.4
[pretrain]
data = "{data}"
val_fraction = 0.25
batch_size = 2
steps = {steps}
learning_rate = 1e-2
eval_every = {eval_every}
""")
    return path


@pytest.fixture(scope="module")
def argon_file(argon_run, tmp_path_factory):
    """The argon teacher frames written again by ASE's own extxyz writer (8 decimals), first 16 frames."""
    frames = ase.io.read(argon_run[0] / "dataset.extxyz", ":16")
    path = tmp_path_factory.mktemp("data") / "argon.extxyz"
    ase.io.write(path, frames, format="extxyz")
    return path


def test_pretrain_from_an_extxyz_file(tmp_path, argon_file):
    work = tmp_path / "run"
    r = pretrain(data_config(tmp_path, argon_file, steps=100, eval_every=20), work)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = report(work)
    assert rep["source"] == str(argon_file) and rep["n_frames"] == 16 and rep["n_val"] == 4
    assert not (work / "dataset.extxyz").exists()  # the file is the data
    teacher = read_dataset(argon_file)
    assert rep["teacher_force_std"] == pytest.approx(float(np.std(teacher.forces)), rel=1e-12)
    rows = metrics(work)
    assert [m["step"] for m in rows] == [20, 40, 60, 80, 100]
    assert rows[-1]["val_force_rmse"] < 0.7 * rows[0]["val_force_rmse"]


def _params(work):
    return jax.tree.map(np.asarray, load_pretrained(work))


def _assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def file_reference(argon_file, tmp_path_factory):
    """An uninterrupted 100-step run on the argon file: (config, workdir)."""
    tmp = tmp_path_factory.mktemp("reference")
    config = data_config(tmp, argon_file)
    r = pretrain(config, tmp / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    return config, tmp / "run"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopped_or_killed_run_resumes_to_the_same_parameters(tmp_path, file_reference, how):
    """SIGTERM: a checkpoint at the step in flight, exit 3; kill -9: the last checkpoint (every
    eval_every steps) survives.  Rerunning the same command ends with the uninterrupted run's parameters
    and metrics."""
    config, reference = file_reference
    work = tmp_path / "run"
    proc = subprocess.Popen(command(config, work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env())
    t0 = time.time()
    while not (work / "checkpoints" / "10").is_dir():  # orbax renames a step's directory when it is complete
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.02)
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=120)
    assert proc.returncode == (3 if how == "SIGTERM" else -9), proc.stderr.read()[-3000:]
    assert len(metrics(work)) < len(metrics(reference))  # it really was interrupted
    r = pretrain(config, work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from step" in r.stderr
    _assert_same_params(_params(work), _params(reference))
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in metrics(work)]
    assert strip == [{k: v for k, v in m.items() if k != "seconds"} for m in metrics(reference)]


def test_resume_with_a_changed_model_is_refused(tmp_path, file_reference):
    config, reference = file_reference
    work = tmp_path / "run"
    import shutil

    shutil.copytree(reference, work)
    before = (work / "metrics.jsonl").read_text()
    r = pretrain(config, work, "pretrain.batch_size=4")
    assert r.returncode == 2 and r.stderr.startswith("error: pretrain.batch_size: differs from the checkpoint")
    assert len(r.stderr.strip().splitlines()) == 1
    assert (work / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("overrides, key", [
    (["pretrain.data=argon_mpnn_pretrain.toml"], "pretrain.data"),  # a teacher and data
    (['potential.parameters={"lj.sigma" = 0.3}'], "potential"),  # named parameters are for classical kinds
    (["potential.kind=lennard_jones", "potential.sigma=0.34", "potential.epsilon=1.0"], "potential.kind"),
    (["potential.checkpoint=."], "potential.checkpoint"),  # a directory without a pretrain checkpoint
    (["pretrain.teacher.kind=mpnn"], "pretrain.teacher"),
    (["pretrain.teacher.cutoff=1.0"], "pretrain.teacher.cutoff"),  # more than half the box
])
def test_bad_input_exits_2_with_one_line_naming_the_key_and_creates_nothing(tmp_path, overrides, key):
    r = pretrain(ARGON, tmp_path / "run", *overrides)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.startswith(f"error: {key}:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", [None, "no energies"])
def test_missing_or_unusable_data_file_exits_2(tmp_path, content):
    data = tmp_path / "data.extxyz"
    if content:
        data.write_text("2\nLattice=\"10 0 0 0 10 0 0 0 10\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\n"
                        "Ar 0 0 0\nAr 3 0 0\n")
    config = data_config(tmp_path, data).read_text().replace('kind = "file"\npath = "%s"' % data,
                                                            'n_atoms = 64\ndensity = 1.374')
    (tmp_path / "from_file.toml").write_text(config)
    r = pretrain(tmp_path / "from_file.toml", tmp_path / "run")
    assert r.returncode == 2 and r.stderr.startswith("error: pretrain.data:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_potential_checkpoint_loads_the_pretrained_parameters(argon_run):
    """`potential.checkpoint` (what simulate and train build their potential from) gives the checkpointed
    parameters, cast to the run's precision, and the forces the report measured."""
    from dmd_dist import assemble
    from dmd_dist.config import load_config

    work = argon_run[0]
    cfg = load_config(ARGON, [*ARGON_CI, f"potential.checkpoint={work}", "precision=float64"])
    assemble.set_precision("float64")
    system = assemble.build_system(cfg, jax.random.PRNGKey(0))
    potential, params = assemble.build_potential(cfg, system)
    saved = _params(work)
    assert jax.tree.structure(params) == jax.tree.structure(saved)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved)):
        assert a.dtype == np.float64 and b.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(a), b.astype(np.float64))
    # The loaded model's forces on the teacher frames: between the training and validation RMSE.
    ds = read_dataset(work / "dataset.extxyz")
    x = jax.numpy.asarray(ds.positions)
    nbrs = potential.neighbors.allocate(x)
    forces = jax.vmap(lambda x, n: -jax.grad(potential.energy, 1)(params, x, n))(x, nbrs)
    rmse = float(np.sqrt(np.mean((np.asarray(forces) - ds.forces) ** 2)))
    rep = report(work)
    lo, hi = sorted([rep["train_force_rmse"], rep["val_force_rmse"]])
    assert lo * 0.999 < rmse < hi * 1.001


WATER_MPNN = ROOT / "configs/tiny_water_ir_mpnn_refine.toml"
# The learned dipole from zero reference charges (it must learn the charges), on 40 teacher frames.
DIPOLE = ['pretrain.target="dipole"', 'dipole.model="learned"', "dipole.charges=0.0", "pretrain.frames=10",
          "pretrain.steps=600", "pretrain.learning_rate=1e-2", "pretrain.eval_every=200", "system.equilibration_steps=300"]


def test_dipole_target_learns_the_teachers_dipoles_and_loads_as_dipole_checkpoint(tmp_path):
    """`pretrain.target = "dipole"`: the learned dipole model, from zero reference charges, matches SPC/Fw's
    total dipoles to well under the spread of the dipoles; `dipole.checkpoint` then loads exactly the
    saved model (same dipole on a teacher frame), and the run is refused as a potential."""
    import jax.numpy as jnp

    from dmd_dist.assemble import build_dipole, build_potential, build_system, set_precision
    from dmd_dist.config import load_config
    from dmd_dist.potentials.dipole import CoulombCharges
    from dmd_dist.train.dataset import read_dataset

    work = tmp_path / "dipole"
    r = pretrain(WATER_MPNN, work, *DIPOLE)
    assert r.returncode == 0, r.stderr[-3000:]
    rep, rows = report(work), metrics(work)
    print(f"\ndipole pretrain: val rmse {rep['val_dipole_rmse']:.3g} e nm/molecule, teacher std "
          f"{rep['teacher_dipole_std']:.3g}, ratio {rep['val_dipole_rmse_over_teacher_dipole_std']:.4f}")
    assert rep["target"] == "dipole" and rep["val_dipole_rmse"] < 0.05 * rep["teacher_dipole_std"]
    assert rows[-1]["val_dipole_rmse"] < rows[0]["val_dipole_rmse"]

    cfg = load_config(WATER_MPNN, [o for o in DIPOLE if o.startswith("dipole")] + [f"dipole.checkpoint={work}"])
    set_precision(cfg.precision)
    system = build_system(cfg, jax.random.PRNGKey(0))
    potential, params = build_dipole(cfg, system, *build_potential(cfg, system))
    ds = read_dataset(work / "dataset.extxyz")
    x = jnp.asarray(ds.positions[-1], system.positions.dtype)
    nbrs = potential.neighbors.allocate(x)
    teacher = CoulombCharges(system).dipole({"coulomb": {"charge": jnp.asarray([-0.82, 0.41])}}, x, None)
    predicted = potential.dipole(params, x, nbrs)
    assert float(jnp.linalg.norm(predicted - teacher)) < 0.05 * float(jnp.linalg.norm(teacher))
    saved = load_pretrained_dipole(work)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(params["dipole"])):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b))

    bad = subprocess.run([sys.executable, "-m", "dmd_dist", "simulate", str(WATER_MPNN), "--workdir",
                          str(tmp_path / "sim"), "--set", f"potential.checkpoint={work}"], capture_output=True,
                         text=True, env=env(), timeout=300)
    assert bad.returncode == 2 and "potential.checkpoint" in bad.stderr and "dipole model" in bad.stderr
    assert not (tmp_path / "sim").exists()


def load_pretrained_dipole(work):
    from dmd_dist import checkpoint
    from dmd_dist.potentials.pretrained import saved_meta

    meta = saved_meta(work, "dipole.checkpoint", potential=False)
    return checkpoint.restore_arrays(Path(work) / "checkpoints", meta["step"])["params"]["dipole"]


@pytest.mark.parametrize("overrides, key", [
    (['pretrain.target="dipole"'], "dipole.model"),  # the config's dipole model is fixed charges
    (['pretrain.target="dipole"', 'dipole.model="learned"',
      'pretrain.teacher={kind="lennard_jones", sigma=0.3, epsilon=0.5}'], "pretrain.teacher"),  # no charges
])
def test_dipole_target_bad_input_exits_2_naming_the_key(tmp_path, overrides, key):
    r = pretrain(WATER_MPNN, tmp_path / "run", *overrides)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {key}"), r.stderr
    assert not (tmp_path / "run").exists()
