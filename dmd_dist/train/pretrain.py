"""`pretrain`: energy and force matching of the MPNN ([potential]) to reference data.

The reference data are either sampled from a classical teacher potential (`[pretrain] teacher`) by NVT
Langevin chains, frames `sampling.steps_between_frames` apart, optionally at several temperatures, or
read from an extended-XYZ (any ASE-readable) file with energies in eV and forces in eV/Angstrom
(`[pretrain] data`), the convention of ASE and of most DFT tools.  Inside, everything is nm and kJ/mol.

Teacher frames are written to `DIR/dataset.extxyz` (eV, eV/Angstrom, every float written exactly) and
read back through the same reader that reads user files: the model is trained on exactly what the file
holds, so the file is a faithful record, a resumed run sees the same data bit for bit, and the file can be
reused as `pretrain.data`.

Loss per batch: energy_weight * mean((E - E_ref)/N)^2 + force_weight * mean over atoms and components of
(F - F_ref)^2, in kJ/mol/atom and kJ/mol/nm; Adam with a cosine-decayed learning rate.  The split into
training and validation frames and the batch order are functions of `seed` alone; the state (parameters,
optimizer state, step) is checkpointed with orbax every `eval_every` steps, and rerunning the same command
continues from the latest checkpoint.  `load_pretrained` and `potential.checkpoint` (honoured by
`assemble.build_potential`) start later commands from the result.
"""

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from ase import units as ase_units

from dmd_dist import integrators, space
from dmd_dist.assemble import build_potential, build_system, set_precision
from dmd_dist.driver import OverflowCounter, run_checked, scan_steps
from dmd_dist.errors import InputError
from dmd_dist.progress import progress_bar
from dmd_dist.sampler import init_chains
from dmd_dist.systems import make_system, prepare
from dmd_dist.systems.builders import atomic_mass
from dmd_dist import checkpoint
from dmd_dist.config import dump_config
from dmd_dist.train.preemption import Preempted, StopFlag
from dmd_dist.units import ANGSTROM

log = logging.getLogger("dmd_dist")

EV = ase_units.eV / (ase_units.kJ / ase_units.mol)  # kJ/mol per eV (96.485...)
EV_PER_ANGSTROM = EV / ANGSTROM  # kJ/mol/nm per eV/Angstrom (964.85...)
# [pretrain] keys a resumed run may change (logged); every other key must match the checkpoint.
RESUMABLE = ("steps", "learning_rate", "final_learning_rate", "eval_every", "keep")
OUTPUT_SCALE_LENGTH = 0.1  # nm: the initial energy readout is scaled by the force RMS times this
UNITS = {"force": "kJ/mol/nm", "energy": "kJ/mol", "energy_per_atom": "kJ/mol/atom", "time": "s"}


# -- data ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Dataset:
    """Frames of one set of atoms in one orthorhombic box, in nm and kJ/mol."""

    symbols: tuple  # (N,) chemical symbols
    box: np.ndarray  # (3,) nm
    positions: np.ndarray  # (F, N, 3) nm
    energies: np.ndarray  # (F,) kJ/mol
    forces: np.ndarray  # (F, N, 3) kJ/mol/nm
    info: list  # per frame: a dict of scalars (teacher frames: chain, temperature, time)

    @property
    def n_frames(self) -> int:
        return len(self.energies)

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)


def read_dataset(path, energy_key=None, forces_key=None, key="pretrain.data") -> Dataset:
    """Every frame of an ASE-readable file (extxyz: `energy=` in the comment line, a `forces` column).

    Units in the file: Angstrom, eV, eV/Angstrom (ASE's).  `energy_key`/`forces_key` read
    `atoms.info[...]`/`atoms.arrays[...]` instead of the calculator results (e.g. "REF_energy").  All
    frames must hold the same atoms in the same order in the same periodic orthorhombic cell.
    """
    import ase.io

    path = Path(path)
    try:
        frames = ase.io.read(path, index=":")
    except FileNotFoundError:
        raise InputError(key, f"no such file: {path}") from None
    except Exception as e:  # ASE raises many types for unreadable files
        raise InputError(key, f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not frames:
        raise InputError(key, f"{path} holds no frames")
    symbols = tuple(frames[0].get_chemical_symbols())
    cell = np.asarray(frames[0].cell[:])
    box = np.diag(cell)
    if not frames[0].pbc.all() or np.any(np.abs(cell - np.diag(box)) > 1e-8) or np.any(box <= 0):
        raise InputError(key, f"{path}: needs a periodic orthorhombic cell, got cell {cell.tolist()}")
    positions, energies, forces, info = [], [], [], []
    for i, atoms in enumerate(frames):
        where = f"{path} frame {i}"
        if tuple(atoms.get_chemical_symbols()) != symbols:
            raise InputError(key, f"{where}: atoms differ from frame 0 (every frame must hold the same atoms "
                                  "in the same order)")
        if not atoms.pbc.all() or np.max(np.abs(np.asarray(atoms.cell[:]) - cell)) > 1e-8:
            raise InputError(key, f"{where}: cell differs from frame 0 (one periodic cell for all frames)")
        try:
            e = atoms.info[energy_key] if energy_key else atoms.get_potential_energy()
        except Exception:
            what = f"no info key {energy_key!r}" if energy_key else "no energy (extxyz: energy=... in the comment line)"
            raise InputError(key, f"{where}: {what}") from None
        try:
            f = atoms.arrays[forces_key] if forces_key else atoms.get_forces()
        except Exception:
            what = f"no array {forces_key!r}" if forces_key else "no forces (extxyz: a forces:R:3 column)"
            raise InputError(key, f"{where}: {what}") from None
        f = np.asarray(f, float)
        if f.shape != (len(symbols), 3) or not np.isfinite(f).all() or not np.isfinite(float(e)):
            raise InputError(key, f"{where}: energy and forces must be finite, forces of shape (atoms, 3)")
        positions.append(atoms.get_positions() * ANGSTROM)
        energies.append(float(e) * EV)
        forces.append(f * EV_PER_ANGSTROM)
        info.append({k: v for k, v in atoms.info.items() if np.ndim(v) == 0 and k != energy_key})
    return Dataset(symbols, box * ANGSTROM, np.stack(positions), np.asarray(energies), np.stack(forces), info)


def write_dataset(path, ds: Dataset):
    """Extended XYZ in Angstrom, eV and eV/Angstrom that ASE reads (`ase.io.read(path, ":")`), with every
    float written by `repr` (exact round trip, unlike ASE's own 8-decimal writer); atomic replace."""
    path = Path(path)
    a, b, c = (repr(float(x / ANGSTROM)) for x in ds.box)
    lines = []
    for i in range(ds.n_frames):
        extra = "".join(f" {k}={_info_value(v)}" for k, v in ds.info[i].items())
        lines.append(str(ds.n_atoms))
        lines.append(f'Lattice="{a} 0.0 0.0 0.0 {b} 0.0 0.0 0.0 {c}" Properties=species:S:1:pos:R:3:forces:R:3 '
                     f'energy={float(ds.energies[i] / EV)!r}{extra} pbc="T T T"')
        x, f = (ds.positions[i] / ANGSTROM).tolist(), (ds.forces[i] / EV_PER_ANGSTROM).tolist()  # Python floats
        lines += [" ".join([s] + [repr(v) for v in x[j] + f[j]]) for j, s in enumerate(ds.symbols)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _info_value(v):
    if isinstance(v, (bool, np.bool_)):
        return "T" if v else "F"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    text = str(v)
    if not text or any(ch in text for ch in ' ="\\'):
        raise ValueError(f"info value {v!r} cannot be written unquoted")
    return text


def _file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# -- teacher -------------------------------------------------------------------------------------------


def _teacher_config(cfg):
    """The teacher as a full config whose [potential] is the teacher (the builders read that section)."""
    return cfg.model_copy(update={"potential": cfg.pretrain.teacher})


def _rekey(e: InputError):
    """Errors the builders report against [potential] concern the teacher here."""
    key = e.key.replace("potential", "pretrain.teacher", 1) if e.key.startswith("potential") else e.key
    return InputError(key, e.problem)


def teacher_setup(cfg):
    """(system, teacher potential, teacher params, key): the config's system, prepared (relaxed, melted,
    equilibrated) with the teacher, as `assemble.build` prepares it for a run's own potential."""
    key = jax.random.PRNGKey(cfg.seed)
    k_build, k_prep, key = jax.random.split(key, 3)
    tcfg = _teacher_config(cfg)
    system = build_system(tcfg, k_build)
    try:
        teacher, tparams = build_potential(tcfg, system)
    except InputError as e:
        raise _rekey(e) from None
    return system, teacher, tparams, k_prep, key


def sample_teacher(cfg, system, teacher, tparams, k_prep, key, progress=True) -> Dataset:
    """Frames of NVT Langevin chains of the teacher: `pretrain.chains` per temperature, each equilibrated
    for `sampling.equilibration_steps` (rounded up to a multiple of `sampling.steps_between_frames`) and
    then recording `pretrain.frames` frames `sampling.steps_between_frames` apart.  Chain c draws its
    noise from fold_in(key, c)."""
    pre, smp, sysc = cfg.pretrain, cfg.sampling, cfg.system
    if sysc.equilibration_steps:
        melt = 2.0 * smp.temperature if (sysc.melt and sysc.kind != "file") else None
        system = prepare(system, teacher, tparams, smp.temperature, k_prep, sysc.equilibration_steps, smp.dt,
                         sysc.friction, melt)
    temps = list(pre.temperatures or [smp.temperature])
    n_chains = len(temps) * pre.chains
    chain_t = jnp.repeat(jnp.asarray(temps, system.positions.dtype), pre.chains)
    dyn = integrators.Dynamics(teacher, system.masses)

    def langevin(t):
        return integrators.langevin_baoab(dyn, smp.dt, t, smp.friction)

    states = init_chains(langevin(smp.temperature), system, teacher, tparams, key, n_chains, chain_t)

    def advance(n_steps):
        def one(s, t):
            s, _ = scan_steps(langevin(t).step, tparams, s, n_steps)
            return s, teacher.energy(tparams, s.position, s.neighbors)
        return jax.jit(lambda s: jax.vmap(one)(s, chain_t))

    counter = OverflowCounter()
    cf = pre.teacher.capacity_factor
    frame = advance(smp.steps_between_frames)
    n_equilibrate = -(-smp.equilibration_steps // smp.steps_between_frames)  # one compiled chunk serves both
    for _ in range(n_equilibrate):
        states, _ = run_checked(frame, states, teacher.neighbors, counter, cf)
    out = []
    bar = progress_bar(pre.frames, "teacher frames", "frame", progress)
    for i in range(pre.frames):
        states, energy = run_checked(frame, states, teacher.neighbors, counter, cf)
        out.append(jax.tree.map(np.asarray, (states.position, energy, states.force)))
        if not (np.isfinite(out[-1][1]).all() and np.isfinite(out[-1][2]).all()):
            raise RuntimeError(f"teacher frame {i}: non-finite energy or forces (lower sampling.dt?)")
        bar.update()
    bar.close()
    positions = np.stack([o[0] for o in out], 1).reshape((-1,) + system.positions.shape)  # chain-major
    energies = np.stack([o[1] for o in out], 1).reshape(-1)
    forces = np.stack([o[2] for o in out], 1).reshape((-1,) + system.positions.shape)
    info = [{"chain": c, "temperature": float(temps[c // pre.chains]),
             "time": (n_equilibrate + i + 1) * smp.steps_between_frames * smp.dt}
            for c in range(n_chains) for i in range(pre.frames)]
    names = system.topology.species_names
    symbols = tuple(names[s] for s in system.topology.species)
    log.info("teacher: %d chains at %s K, %d frames each (%d in all), %d neighbour-list re-allocations",
             n_chains, temps, pre.frames, len(energies), counter.reallocations)
    return Dataset(symbols, np.asarray(system.box), positions, energies, forces, info)


def dataset_system(ds: Dataset):
    """A System for the dataset's atoms and box (the student potential is built for it)."""
    names = tuple(dict.fromkeys(ds.symbols))
    species = np.array([names.index(s) for s in ds.symbols])
    masses = np.array([atomic_mass(s) for s in ds.symbols])
    return make_system(ds.positions[0], masses, ds.box, species, names)


# -- fingerprint and checkpoints -----------------------------------------------------------------------


def _data_config(cfg):
    """What defines the teacher data: a changed value means new data."""
    d = cfg.model_dump(mode="json")
    pre = d["pretrain"]
    return {"seed": d["seed"], "precision": d["precision"], "system": d["system"], "sampling": d["sampling"],
            "teacher": pre["teacher"], "temperatures": pre["temperatures"], "chains": pre["chains"],
            "frames": pre["frames"]}


def fingerprint(cfg):
    """What defines the model and its training state; a resume must match it (RESUMABLE keys aside)."""
    d = cfg.model_dump(mode="json")
    out = {"seed": d["seed"], "precision": d["precision"], "potential": d["potential"],
           "pretrain": {k: v for k, v in d["pretrain"].items() if k not in RESUMABLE}}
    if cfg.pretrain.teacher is not None:
        out |= {"system": d["system"], "sampling": d["sampling"]}
    return out


def checkpoint_dir(path):
    """A pretrain run directory or its checkpoints/ directory -> the checkpoints directory."""
    p = Path(path)
    return p / "checkpoints" if (p / "checkpoints").is_dir() else p


def pretrained_meta(path, key="potential.checkpoint"):
    """The JSON meta of the latest checkpoint of a pretrain run (architecture, species, step, ...)."""
    step, meta = None, None
    try:
        step, meta = checkpoint.latest_meta(checkpoint_dir(path))
    except Exception as e:
        raise InputError(key, f"cannot read checkpoints in {path}: {type(e).__name__}: {e}") from None
    if step is None or not isinstance(meta, dict) or meta.get("kind") != "dmd-dist pretrain":
        raise InputError(key, f"{path} holds no dmd-dist pretrain checkpoint")
    return meta


def load_pretrained(path, key="potential.checkpoint"):
    """The parameters (a nested dict of numpy arrays, MPNN layout) of the latest checkpoint of a pretrain
    run; `path` is the run directory or its checkpoints/ directory."""
    ckpt = checkpoint_dir(path)
    meta = pretrained_meta(ckpt, key)
    with checkpoint.reading(ckpt) as mngr:
        params = mngr.restore(meta["step"], args=ocp.args.Composite(params=ocp.args.StandardRestore())).params
    return jax.tree.map(np.asarray, params)


def pretrained_potential(system, pcfg, key="potential.checkpoint"):
    """(MPNNPotential, params) for `system` from the pre-trained model at `pcfg.checkpoint`.

    The checkpoint defines the model: its architecture, cutoff and message normalisation are used (the
    config's `preset` and `cutoff` must agree); species are matched by name, so the system may list them in
    another order or use a subset; parameters are cast to the system's precision.
    """
    from dmd_dist.potentials import choose_neighbors
    from dmd_dist.potentials.mpnn import MPNNPotential, resolve_hyper

    meta = pretrained_meta(pcfg.checkpoint, key)
    hyper = resolve_hyper(meta["hyper"])
    if pcfg.preset != meta["preset"]:
        raise InputError("potential.preset", f"{pcfg.preset!r} differs from the pre-trained model's "
                                             f"{meta['preset']!r} ({pcfg.checkpoint})")
    if not math.isclose(pcfg.cutoff, hyper.cutoff, rel_tol=1e-12):
        raise InputError("potential.cutoff", f"{pcfg.cutoff} nm differs from the pre-trained model's "
                                             f"{hyper.cutoff} nm ({pcfg.checkpoint})")
    names, saved = list(system.topology.species_names), list(meta["species_names"])
    unknown = [s for s in names if s not in saved]
    if unknown:
        raise InputError(key, f"the system has species {unknown} the pre-trained model never saw ({saved})")
    rows = np.array([saved.index(s) for s in names])
    params = load_pretrained(pcfg.checkpoint, key)
    params["offset"] = params["offset"][rows]
    params["representation"]["embed"]["embedding"] = params["representation"]["embed"]["embedding"][rows]
    neighbors = choose_neighbors(system, hyper.cutoff, pcfg.skin, pcfg.neighbor_list, pcfg.capacity_factor)
    dtype = system.positions.dtype
    pot = MPNNPotential(space.periodic(system.box)[0], neighbors, system.topology.species, len(names), hyper,
                        jax.random.PRNGKey(pcfg.init_seed), dtype)
    template = pot.default_params()
    if jax.tree.structure(template) != jax.tree.structure(params) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(params))):
        raise InputError(key, "the checkpoint's parameters do not fit its recorded architecture")
    return pot, jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


# -- training ------------------------------------------------------------------------------------------


def _optimizer(pre):
    final = pre.final_learning_rate if pre.final_learning_rate is not None else pre.learning_rate / 100.0
    schedule = optax.cosine_decay_schedule(pre.learning_rate, pre.steps, alpha=final / pre.learning_rate)
    return optax.adam(schedule), schedule


def _functions(potential, n_atoms, species, n_species, w_energy, w_force, opt):
    """Jitted (train_step, evaluate) on a dataset held as device arrays (X, nbrs, E, F)."""
    onehot = jax.nn.one_hot(jnp.asarray(species), n_species)

    def predict(params, x, nbrs):
        e, g = jax.value_and_grad(potential.energy, argnums=1)(params, x, nbrs)
        return e, -g

    batched = jax.vmap(predict, (None, 0, 0))

    def take(data, idx):
        return jax.tree.map(lambda a: a[idx], data)

    def loss_fn(params, batch):
        x, nbrs, e_ref, f_ref = batch
        e, f = batched(params, x, nbrs)
        return w_energy * jnp.mean(((e - e_ref) / n_atoms) ** 2) + w_force * jnp.mean((f - f_ref) ** 2)

    @jax.jit
    def train_step(params, opt_state, data, idx):
        loss, grads = jax.value_and_grad(loss_fn)(params, take(data, idx))
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def evaluate(params, data, idx, weight):
        """Per-frame energy predictions and weighted sums: |dE|/N, (dE/N)^2, dF^2 per species."""
        x, nbrs, e_ref, f_ref = take(data, idx)
        e, f = batched(params, x, nbrs)
        de = (e - e_ref) / n_atoms
        df2 = jnp.sum((f - f_ref) ** 2, axis=-1) @ onehot  # (B, S)
        return e, {"abs_de": jnp.sum(weight * jnp.abs(de)), "de2": jnp.sum(weight * de * de),
                   "df2": jnp.sum(weight[:, None] * df2, axis=0)}

    return train_step, evaluate


class _Evaluator:
    """Metrics of a parameter set on a fixed subset of frames, in padded chunks (one compilation)."""

    def __init__(self, evaluate, data, indices, chunk, counts, w_energy, w_force):
        self.evaluate, self.data, self.counts = evaluate, data, counts  # counts: atoms per species
        self.w_energy, self.w_force = w_energy, w_force
        self.n = len(indices)
        pad = (-self.n) % chunk
        idx = np.concatenate([indices, np.repeat(indices[:1], pad)])
        weight = np.concatenate([np.ones(self.n), np.zeros(pad)])
        self.chunks = [(jnp.asarray(idx[i:i + chunk]), jnp.asarray(weight[i:i + chunk]))
                       for i in range(0, len(idx), chunk)]

    def energies(self, params):
        return np.concatenate([np.asarray(self.evaluate(params, self.data, i, w)[0]) for i, w in self.chunks])[:self.n]

    def __call__(self, params):
        sums = None
        for i, w in self.chunks:
            s = self.evaluate(params, self.data, i, w)[1]
            sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
        sums = jax.tree.map(np.asarray, sums)
        n_atoms = self.counts.sum()
        mse_f = float(sums["df2"].sum()) / (3 * n_atoms * self.n)
        return {"force_rmse": math.sqrt(mse_f),
                "energy_mae_per_atom": float(sums["abs_de"]) / self.n,
                "loss": self.w_energy * float(sums["de2"]) / self.n + self.w_force * mse_f,
                "force_rmse_by_species": np.sqrt(sums["df2"] / (3 * self.counts * self.n))}


def _scale_output(params, scale):
    """Multiply the energy readout's last layer by `scale` (kJ/mol): with the teacher's force RMS times
    0.1 nm (the usual "force RMS in per-Angstrom units" of MLIP codes) the initial network's forces have
    the reference's magnitude, so Adam's steps of about `learning_rate` per parameter need not first grow
    the output weights (water's stiff O-H bonds make forces of ~10^3 kJ/mol/nm)."""
    params = jax.tree.map(lambda a: a, params)
    last = params["readout"]["layers"][str(len(params["readout"]["layers"]) - 1)]
    for name in ("kernel", "bias"):
        last[name] = last[name] * scale
    return params


def _fit_offsets(params, energies_pred, energies_ref, species, n_species):
    """Per-species energy offsets by least squares on the residual of the initial network (minimum norm:
    with one composition per dataset the split between species is not determined by the data)."""
    counts = np.bincount(species, minlength=n_species).astype(float)
    a = np.broadcast_to(counts, (len(energies_ref), n_species))
    shift = np.linalg.lstsq(a, np.asarray(energies_ref) - np.asarray(energies_pred), rcond=None)[0]
    params = dict(params)
    params["offset"] = params["offset"] + jnp.asarray(shift, params["offset"].dtype)
    return params


def pretrain(cfg, workdir, progress=None):
    """Run (or resume) pre-training of the config's MPNN; writes into `workdir`: config.toml,
    dataset.extxyz (teacher data), metrics.jsonl, checkpoints/, pretrain_report.json.  Returns the report."""
    t_start = time.perf_counter()
    set_precision(cfg.precision)
    pre = cfg.pretrain
    progress = cfg.output.progress if progress is None else progress
    if cfg.potential.kind != "mpnn":
        raise InputError("potential.kind", f"pretrain trains an MPNN: set potential.kind = 'mpnn' (got "
                                           f"{cfg.potential.kind!r}); the reference goes in pretrain.teacher")
    if pre.teacher is None and pre.data is None:
        raise InputError("pretrain", "give pretrain.teacher (a classical potential to sample) or pretrain.data "
                                     "(an extxyz file with energies and forces)")
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"

    # Everything that can be wrong with the input is found before anything is written.
    if pre.data is not None:
        ds = read_dataset(pre.data, pre.energy_key, pre.forces_key)
        system = dataset_system(ds)
        dataset_sha = _file_sha256(pre.data)
    else:
        system, teacher, tparams, k_prep, k_data = teacher_setup(cfg)
    student, params = build_potential(cfg, system)
    saved_step, saved_meta = checkpoint.latest_meta(ckpt_dir)
    if saved_step is not None:
        now = fingerprint(cfg)
        if saved_meta.get("kind") != "dmd-dist pretrain":
            raise InputError("--workdir", f"{ckpt_dir} holds checkpoints of another command")
        if saved_meta["fingerprint"] != now:
            changed = checkpoint.first_difference(saved_meta["fingerprint"], now, "config").removeprefix("config.")
            raise InputError(changed, f"differs from the checkpoint in {ckpt_dir} (it defines the model, the "
                                      "data and the training state; use a new --workdir to change it)")
        if pre.data is not None and saved_meta["dataset_sha256"] != dataset_sha:
            raise InputError("pretrain.data", f"{pre.data} changed since the checkpoint in {ckpt_dir} was written")

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.toml").write_text(dump_config(cfg))
    t_data = time.perf_counter()
    if pre.teacher is not None:
        ds_path = workdir / "dataset.extxyz"
        tag = "cfg" + _sha256(_data_config(cfg))[:16]
        ds = None
        if ds_path.is_file() and _dataset_tag(ds_path) == tag:  # written by an earlier run of this config
            try:
                ds = read_dataset(ds_path, key=str(ds_path))
                log.info("teacher data: reusing %s", ds_path)
            except InputError as e:
                log.warning("teacher data: %s; sampling again", e)
        if ds is None:
            log.info("teacher data: sampling %s", pre.teacher.kind)
            ds = sample_teacher(cfg, system, teacher, tparams, k_prep, k_data, progress)
            for d in ds.info:
                d["dataset_config"] = tag
            write_dataset(ds_path, ds)
            ds = read_dataset(ds_path, key=str(ds_path))  # train on exactly what the file holds
        dataset_sha = _file_sha256(ds_path)
        if saved_step is not None and saved_meta["dataset_sha256"] != dataset_sha:
            raise InputError("--workdir", f"{ds_path} differs from the data the checkpoint was trained on")
    seconds_data = time.perf_counter() - t_data

    # Split and batches: functions of the seed alone.
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0x5EED)
    n = ds.n_frames
    n_val = max(1, int(round(pre.val_fraction * n)))
    if n - n_val < 1:
        raise InputError("pretrain.val_fraction", f"leaves no training frames out of {n}")
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), n))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    batch = min(pre.batch_size, len(train_idx))
    per_epoch = len(train_idx) // batch

    species = np.asarray(system.topology.species)
    n_species = len(system.topology.species_names)
    counts = np.bincount(species, minlength=n_species).astype(float)
    dtype = system.positions.dtype
    x_all = jnp.asarray(ds.positions, dtype)
    data = (x_all, student.neighbors.allocate(x_all), jnp.asarray(ds.energies, dtype), jnp.asarray(ds.forces, dtype))
    opt, schedule = _optimizer(pre)
    train_step, evaluate = _functions(student, ds.n_atoms, species, n_species, pre.energy_weight,
                                      pre.force_weight, opt)
    chunk = min(max(2 * batch, 16), n)
    val = _Evaluator(evaluate, data, val_idx, chunk, counts, pre.energy_weight, pre.force_weight)
    train_eval = _Evaluator(evaluate, data, train_idx, chunk, counts, pre.energy_weight, pre.force_weight)

    teacher_force_std = float(np.std(ds.forces))
    if cfg.potential.checkpoint is None:
        params = _scale_output(params, OUTPUT_SCALE_LENGTH * float(np.sqrt(np.mean(ds.forces[train_idx] ** 2))))
        params = _fit_offsets(params, train_eval.energies(params), ds.energies[train_idx], species, n_species)
    opt_state = opt.init(params)
    step, seconds_before = 0, 0.0
    metrics_path = workdir / "metrics.jsonl"
    if saved_step is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": opt_state})
        with checkpoint.reading(ckpt_dir) as mngr:
            restored = mngr.restore(saved_step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract["params"]),
                opt_state=ocp.args.StandardRestore(abstract["opt_state"])))
        params, opt_state = restored.params, restored.opt_state
        step, seconds_before = saved_step, saved_meta["seconds"]
        old = {k: saved_meta["resumable"].get(k) for k in RESUMABLE}
        new = {k: getattr(pre, k) for k in RESUMABLE}
        log.info("resuming from step %d of %s%s", step, ckpt_dir,
                 "".join(f"; pretrain.{k} {old[k]} -> {new[k]}" for k in RESUMABLE if old[k] != new[k]))
    checkpoint.truncate_metrics(metrics_path, step, "step")
    log.info("pretrain: %d atoms, %d frames (%d train, %d val), batch %d, %d steps (%.1f epochs), "
             "teacher force std %.4g kJ/mol/nm", ds.n_atoms, n, len(train_idx), n_val, batch, pre.steps,
             pre.steps * batch / len(train_idx), teacher_force_std)

    meta_base = {"kind": "dmd-dist pretrain", "fingerprint": fingerprint(cfg), "dataset_sha256": dataset_sha,
                 "preset": cfg.potential.preset, "hyper": _hyper_json(student.hyper),
                 "species_names": list(system.topology.species_names), "precision": cfg.precision,
                 "resumable": {k: getattr(pre, k) for k in RESUMABLE}}

    mngr = checkpoint.manager(ckpt_dir, pre.keep, keep_best=False)
    t_train = time.perf_counter()
    bar = progress_bar(pre.steps, "pretrain", "step", progress, initial=min(step, pre.steps))
    # Training losses since the last metrics line (a checkpoint taken between two lines carries them).
    losses = list(saved_meta.get("pending_losses", [])) if saved_step is not None else []
    epoch_cache = {}

    def save(step, seconds):
        mngr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta_base | {"step": step, "seconds": seconds,
                                                "pending_losses": [float(v) for v in losses]})))

    try:
        with StopFlag() as stop:
            while step < pre.steps:
                epoch, j = divmod(step, per_epoch)
                if epoch not in epoch_cache:
                    epoch_cache = {epoch: np.asarray(jax.random.permutation(jax.random.fold_in(
                        jax.random.fold_in(key, 2), epoch), len(train_idx)))}
                idx = train_idx[epoch_cache[epoch][j * batch:(j + 1) * batch]]
                params, opt_state, loss = train_step(params, opt_state, data, jnp.asarray(idx))
                losses.append(loss)
                step += 1
                bar.update()
                seconds = seconds_before + time.perf_counter() - t_start
                if step % pre.eval_every == 0 or step == pre.steps:
                    m = val(params)
                    train_loss = float(np.mean([float(v) for v in losses]))
                    losses = []
                    if not (math.isfinite(train_loss) and math.isfinite(m["loss"])):
                        raise RuntimeError(f"non-finite loss at step {step}: lower pretrain.learning_rate")
                    line = {"step": step, "epoch": step * batch / len(train_idx), "train_loss": train_loss,
                            "val_loss": m["loss"], "val_force_rmse": m["force_rmse"],
                            "val_energy_mae_per_atom": m["energy_mae_per_atom"],
                            "learning_rate": float(schedule(step)), "seconds": seconds}
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(line) + "\n")
                    save(step, seconds)
                    bar.set_postfix(val_F_rmse=f"{m['force_rmse']:.4g}",
                                    ratio=f"{m['force_rmse'] / teacher_force_std:.3f}")
                elif stop.signum is not None:
                    save(step, seconds)
                if stop.signum is not None and step < pre.steps:
                    mngr.wait_until_finished()
                    raise Preempted(f"stopped by a preemption signal after step {step}; checkpoint saved, rerun "
                                    "the same command to resume")
    finally:
        bar.close()
        mngr.wait_until_finished()
        mngr.close()
    seconds_train = time.perf_counter() - t_train

    m_val, m_train = val(params), train_eval(params)
    names = list(system.topology.species_names)
    report = {
        "val_force_rmse": m_val["force_rmse"],
        "val_energy_mae_per_atom": m_val["energy_mae_per_atom"],
        "teacher_force_std": teacher_force_std,
        "val_force_rmse_over_teacher_force_std": m_val["force_rmse"] / teacher_force_std,
        "val_force_rmse_by_species": dict(zip(names, m_val["force_rmse_by_species"].tolist())),
        "train_force_rmse": m_train["force_rmse"],
        "train_energy_mae_per_atom": m_train["energy_mae_per_atom"],
        "teacher_energy_std_per_atom": float(np.std(ds.energies / ds.n_atoms)),
        "n_train": int(len(train_idx)), "n_val": int(n_val), "n_frames": int(n), "n_atoms": ds.n_atoms,
        "steps": step, "epochs": step * batch / len(train_idx), "batch_size": batch,
        "source": str(pre.data) if pre.data is not None else f"teacher {pre.teacher.kind}",
        "preset": cfg.potential.preset, "precision": cfg.precision,
        "checkpoint": str(ckpt_dir.resolve()),
        "seconds": seconds_before + time.perf_counter() - t_start,
        "seconds_this_run": time.perf_counter() - t_start,
        "seconds_data": seconds_data, "seconds_train_this_run": seconds_train,
        "units": UNITS,
    }
    (workdir / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("validation force RMSE %.4g kJ/mol/nm = %.4f x the teacher's force std (%.4g); energy MAE %.3g "
             "kJ/mol/atom; %d train / %d val frames; %.1f s; report in %s", report["val_force_rmse"],
             report["val_force_rmse_over_teacher_force_std"], teacher_force_std,
             report["val_energy_mae_per_atom"], len(train_idx), n_val, report["seconds"],
             workdir / "pretrain_report.json")
    return report


def _hyper_json(hyper):
    d = dataclasses.asdict(hyper)
    d["hidden"] = list(d["hidden"])
    return d


def _dataset_tag(path):
    """The `dataset_config` tag of a dataset file's first frame (None if unreadable)."""
    try:
        with open(path) as f:
            f.readline()
            header = f.readline()
    except OSError:
        return None
    for word in header.split():
        if word.startswith("dataset_config="):
            return word.split("=", 1)[1]
    return None
