"""`pretrain`: energy and force matching of the MPNN ([potential]) to reference data, or with
`target = "dipole"` dipole matching of the learned dipole model ([dipole]) to a charged teacher's dipoles.

The reference data are either sampled from a classical teacher potential (`[pretrain] teacher`,
train/teacher.py) or read from an extended-XYZ (any ASE-readable) file with energies in eV and forces in
eV/Angstrom (`[pretrain] data`, train/dataset.py).  Inside, everything is nm and kJ/mol.

Loss per batch: energy_weight * mean((E - E_ref)/N)^2 + force_weight * mean over atoms and components of
(F - F_ref)^2, in kJ/mol/atom and kJ/mol/nm (`EnergyForces`), or the squared dipole error per molecule
(`Dipoles`); Adam with a cosine-decayed learning rate.  The split into
training and validation frames and the batch order are functions of `seed` alone; the state (parameters,
optimizer state) is checkpointed every `eval_every` steps, and rerunning the same command continues from
the latest checkpoint.  `potential.checkpoint` (potentials/pretrained.py) starts later commands from the
result.
"""

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dmd_dist import checkpoint
from dmd_dist.assemble import build_dipole, build_potential, set_precision
from dmd_dist.config import dump_config
from dmd_dist.errors import InputError
from dmd_dist.potentials.core import core_from_data
from dmd_dist.potentials.dipole import DIPOLE_KEY, CoulombCharges
from dmd_dist.potentials.pretrained import KIND, model_meta
from dmd_dist.progress import progress_bar
from dmd_dist.train.dataset import dataset_system, file_sha256, read_dataset
from dmd_dist.train.preemption import Preempted, StopFlag
from dmd_dist.train.teacher import teacher_dataset, teacher_setup
from dmd_dist.units import DEBYE

log = logging.getLogger("dmd_dist")

# [pretrain] keys a resumed run may change (logged); every other key must match the checkpoint.
RESUMABLE = ("steps", "learning_rate", "final_learning_rate", "eval_every", "keep")
OUTPUT_SCALE_LENGTH = 0.1  # nm: the initial energy readout is scaled by the force RMS times this
UNITS = {"force": "kJ/mol/nm", "energy": "kJ/mol", "energy_per_atom": "kJ/mol/atom", "dipole": "e nm per molecule",
         "time": "s"}


def fingerprint(cfg):
    """What defines the model and its training state; a resume must match it (RESUMABLE keys aside)."""
    d = cfg.model_dump(mode="json")
    out = {"seed": d["seed"], "precision": d["precision"], "potential": d["potential"],
           "pretrain": {k: v for k, v in d["pretrain"].items() if k not in RESUMABLE}}
    if cfg.pretrain.teacher is not None:
        out |= {"system": d["system"], "sampling": d["sampling"]}
    if cfg.pretrain.target == "dipole":
        out["dipole"] = d["dipole"]
    return out


def pretrain(cfg, workdir, progress=None):
    """Run (or resume) pre-training of the config's MPNN (or, with `pretrain.target = "dipole"`, of its
    learned dipole model); writes into `workdir`: config.toml, dataset.extxyz (teacher data),
    metrics.jsonl, checkpoints/, pretrain_report.json.  Returns the report."""
    t_start = time.perf_counter()
    set_precision(cfg.precision)
    pre = cfg.pretrain
    progress = cfg.output.progress if progress is None else progress
    _check_input(cfg)
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"

    # Everything that can be wrong with the input is found before anything is written.
    if pre.data is not None:
        ds = read_dataset(pre.data, pre.energy_key, pre.forces_key)
        system = dataset_system(ds)
        dataset_sha = file_sha256(pre.data)
    else:
        system, teacher, tparams, k_prep, k_data = teacher_setup(cfg)
    student, params = build_potential(cfg, system)
    if pre.target == "dipole":
        if "coulomb" not in tparams:
            raise InputError("pretrain.teacher", f"a dipole target needs a teacher with charges (spc_fw), not "
                                                 f"{pre.teacher.kind!r}")
        student, params = build_dipole(cfg, system, student, {})  # the dipole model alone learns
        reference = CoulombCharges(system)
    saved_step, saved_meta = checkpoint.resume_point(ckpt_dir, KIND, fingerprint(cfg))
    if pre.data is not None and saved_step is not None and saved_meta["dataset_sha256"] != dataset_sha:
        raise InputError("pretrain.data", f"{pre.data} changed since the checkpoint in {ckpt_dir} was written")

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.toml").write_text(dump_config(cfg))
    t_data = time.perf_counter()
    if pre.teacher is not None:
        ds, ds_path = teacher_dataset(cfg, workdir, system, teacher, tparams, k_prep, k_data, progress)
        dataset_sha = file_sha256(ds_path)
        if saved_step is not None and saved_meta["dataset_sha256"] != dataset_sha:
            raise InputError("--workdir", f"{ds_path} differs from the data the checkpoint was trained on")
    seconds_data = time.perf_counter() - t_data

    if pre.core_repulsion and pre.target == "energy_forces":  # the potential's (one config serves both targets)
        student = student.with_core(core_from_data(ds.positions, ds.box, system.topology.species,
                                                   len(system.topology.species_names), student.hyper.cutoff,
                                                   pre.core_repulsion))
        log.info("core repulsion %.4g kJ/mol below the data's closest pairs: %s", pre.core_repulsion, ", ".join(
            f"{k} {v:.4f} nm" for k, v in student.core.to_meta(system.topology.species_names)["radii"].items()))
    split = Split.of(cfg.seed, ds.n_frames, pre.val_fraction, pre.batch_size)
    if pre.target == "dipole":
        dipoles = jax.vmap(lambda x: reference.dipole(tparams, x, None))(jnp.asarray(ds.positions, system.positions.dtype))
        target = Dipoles(student.model, system, ds, np.asarray(dipoles))
    else:
        target = EnergyForces(student, system, ds, pre)
    fit = Fit(pre, target, split)
    if cfg.potential.checkpoint is None and pre.target == "energy_forces":
        params = target.initial_output(params, fit.train_eval, split.train)
    state = {"params": params, "opt_state": fit.optimizer.init(params)}
    step, seconds_before, pending = 0, 0.0, []
    if saved_step is not None:
        with checkpoint.reading(ckpt_dir) as mngr:
            state = checkpoint.restore(mngr, saved_step, state)
        step, seconds_before, pending = saved_step, saved_meta["seconds"], saved_meta["pending_losses"]
        old = {k: saved_meta["resumable"].get(k) for k in RESUMABLE}
        new = {k: getattr(pre, k) for k in RESUMABLE}
        log.info("resuming from step %d of %s%s", step, ckpt_dir,
                 "".join(f"; pretrain.{k} {old[k]} -> {new[k]}" for k in RESUMABLE if old[k] != new[k]))
    checkpoint.truncate_metrics(workdir / "metrics.jsonl", step, "step")
    log.info("pretrain (%s): %d atoms, %d frames (%d train, %d val), batch %d, %d steps (%.1f epochs), "
             "teacher %s std %.4g %s", pre.target, ds.n_atoms, ds.n_frames, split.n_train, split.n_val, split.batch,
             pre.steps, pre.steps * split.batch / split.n_train, target.headline.removesuffix("_rmse"),
             target.reference_std, UNITS[target.headline.removesuffix("_rmse")])

    model = model_meta(student, cfg.potential, system, cfg.dipole)
    if pre.target == "dipole":  # a dipole model alone: nothing here defines a potential
        model = {k: model[k] for k in ("species_names", "dipole")}
    meta = {"kind": KIND, "target": pre.target, "fingerprint": fingerprint(cfg), "dataset_sha256": dataset_sha,
            **model, "precision": cfg.precision,
            "resumable": {k: getattr(pre, k) for k in RESUMABLE}}
    t_train = time.perf_counter()
    state, step = fit.run(state, step, pending, workdir, meta, lambda: seconds_before + time.perf_counter() - t_start,
                          progress)
    report = fit.report(state["params"]) | {
        "target": pre.target, "steps": step, "epochs": step * split.batch / split.n_train,
        "source": str(pre.data) if pre.data is not None else f"teacher {pre.teacher.kind}",
        "preset": (cfg.dipole if pre.target == "dipole" else cfg.potential).preset, "precision": cfg.precision,
        "checkpoint": str(ckpt_dir.resolve()),
        "seconds": seconds_before + time.perf_counter() - t_start, "seconds_this_run": time.perf_counter() - t_start,
        "seconds_data": seconds_data, "seconds_train_this_run": time.perf_counter() - t_train, "units": UNITS}
    (workdir / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    name = target.headline
    log.info("validation %s %.4g = %.4f x the teacher's std (%.4g) %s; %d train / %d val frames; %.1f s; report in %s",
             name.replace("_", " "), report[f"val_{name}"], report[f"val_{name}"] / target.reference_std,
             target.reference_std, UNITS[name.removesuffix("_rmse")], split.n_train, split.n_val, report["seconds"],
             workdir / "pretrain_report.json")
    return report


def _check_input(cfg):
    pre = cfg.pretrain
    if pre.target == "dipole":
        if cfg.dipole.model != "learned":
            raise InputError("dipole.model", "pretrain.target = 'dipole' trains the learned dipole model: set "
                                             f"dipole.model = 'learned' (got {cfg.dipole.model!r})")
        if pre.teacher is None:
            raise InputError("pretrain.teacher", "pretrain.target = 'dipole' needs a teacher with charges (data "
                                                 "files carry energies and forces only)")
        return
    if cfg.potential.kind != "mpnn":
        raise InputError("potential.kind", f"pretrain trains an MPNN: set potential.kind = 'mpnn' (got "
                                           f"{cfg.potential.kind!r}); the reference goes in pretrain.teacher")
    if pre.teacher is None and pre.data is None:
        raise InputError("pretrain", "give pretrain.teacher (a classical potential to sample) or pretrain.data "
                                     "(an extxyz file with energies and forces)")


@dataclasses.dataclass(frozen=True)
class Split:
    """Training and validation frames and the batch order: functions of the seed alone."""

    key: jax.Array
    train: np.ndarray  # frame indices, sorted
    val: np.ndarray
    batch: int

    @classmethod
    def of(cls, seed, n_frames, val_fraction, batch_size):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x5EED)
        n_val = max(1, int(round(val_fraction * n_frames)))
        if n_frames - n_val < 1:
            raise InputError("pretrain.val_fraction", f"leaves no training frames out of {n_frames}")
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), n_frames))
        train = np.sort(perm[n_val:])
        return cls(key, train, np.sort(perm[:n_val]), min(batch_size, len(train)))

    @property
    def n_train(self):
        return len(self.train)

    @property
    def n_val(self):
        return len(self.val)

    def epoch_order(self, epoch):
        """The permutation of the training frames in `epoch`: batch j of the epoch is its j-th slice."""
        return np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.fold_in(self.key, 2), epoch),
                                                 self.n_train))


class Fit:
    """The fitting loop of one target (`EnergyForces`, `Dipoles`) on one dataset: the jitted step and the
    evaluators, checkpoints, metrics."""

    def __init__(self, pre, target, split: Split):
        self.pre, self.target, self.split = pre, target, split
        self.optimizer, self.schedule = _optimizer(pre)
        self.train_step = _train_step(target.loss, self.optimizer)
        chunk = min(max(2 * split.batch, 16), split.n_train + split.n_val)
        evaluate = jax.jit(target.evaluate)
        self.val, self.train_eval = (_Evaluator(evaluate, target.data, idx, chunk, target.metrics)
                                     for idx in (split.val, split.train))

    def run(self, state, step, pending, workdir, meta, seconds, progress):
        """Train from `step` to `pretrain.steps`: a metrics line and a checkpoint every `eval_every` steps
        (and on a preemption signal, then Preempted).  `pending`: training losses since the last metrics
        line (a checkpoint taken between two lines carries them).  Returns (state, step)."""
        pre, split, target = self.pre, self.split, self.target
        per_epoch = split.n_train // split.batch
        losses, order = list(pending), {}
        mngr = checkpoint.manager(workdir / "checkpoints", pre.keep, keep_best=False)
        checkpoint.discard_after(mngr, step or None)  # `step` is the checkpoint resumed, 0 for a new run
        bar = progress_bar(pre.steps, "pretrain", "step", progress, initial=min(step, pre.steps))

        def save(step):
            checkpoint.save(mngr, step, state, meta | {"step": step, "seconds": seconds(),
                                                       "pending_losses": [float(v) for v in losses]})

        try:
            with StopFlag() as stop:
                while step < pre.steps:
                    epoch, j = divmod(step, per_epoch)
                    if epoch not in order:
                        order = {epoch: split.epoch_order(epoch)}
                    idx = split.train[order[epoch][j * split.batch:(j + 1) * split.batch]]
                    # int32 on the host: jnp.asarray of int64 indices is an eager conversion (0.5 ms a step)
                    params, opt_state, loss = self.train_step(state["params"], state["opt_state"], target.data,
                                                              idx.astype(np.int32))
                    state = {"params": params, "opt_state": opt_state}
                    losses.append(loss)
                    step += 1
                    bar.update()
                    if step % pre.eval_every == 0 or step == pre.steps:
                        m = self.val(params)
                        train_loss = float(np.mean([float(v) for v in losses]))
                        losses = []
                        if not (math.isfinite(train_loss) and math.isfinite(m["loss"])):
                            raise RuntimeError(f"non-finite loss at step {step}: lower pretrain.learning_rate")
                        checkpoint.append_metrics(workdir / "metrics.jsonl", {
                            "step": step, "epoch": step * split.batch / split.n_train, "train_loss": train_loss,
                            "val_loss": m["loss"], **{f"val_{k}": v for k, v in m.items()
                                                      if k != "loss" and np.ndim(v) == 0},
                            "learning_rate": float(self.schedule(step)), "seconds": seconds()})
                        save(step)
                        bar.set_postfix({f"val_{target.headline}": f"{m[target.headline]:.4g}",
                                         "ratio": f"{m[target.headline] / target.reference_std:.3f}"})
                    elif stop.signum is not None:
                        save(step)
                    if stop.signum is not None and step < pre.steps:
                        mngr.wait_until_finished()
                        raise Preempted(f"stopped by a preemption signal after step {step}; checkpoint saved, "
                                        "rerun the same command to resume")
        finally:
            bar.close()
            mngr.wait_until_finished()
            mngr.close()
        return state, step

    def report(self, params):
        """Validation and training errors of `params` (pretrain_report.json's model entries)."""
        return self.target.report(self.val(params), self.train_eval(params)) | {
            "n_train": self.split.n_train, "n_val": self.split.n_val, "batch_size": self.split.batch}


def _optimizer(pre):
    final = pre.final_learning_rate if pre.final_learning_rate is not None else pre.learning_rate / 100.0
    schedule = optax.cosine_decay_schedule(pre.learning_rate, pre.steps, alpha=final / pre.learning_rate)
    return optax.adam(schedule), schedule


def _take(data, idx):
    return jax.tree.map(lambda a: a[idx], data)


def _train_step(loss_fn, opt):
    """Jitted (params, opt_state, data, idx) -> (params, opt_state, loss) on the frames `idx` of `data`."""

    @jax.jit
    def train_step(params, opt_state, data, idx):
        loss, grads = jax.value_and_grad(loss_fn)(params, _take(data, idx))
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


class EnergyForces:
    """Energy and force matching of a potential: per batch energy_weight * mean((E - E_ref)/N)^2 +
    force_weight * mean over atoms and components of (F - F_ref)^2 (kJ/mol/atom, kJ/mol/nm).

    A fit target: `data` (the dataset as device arrays, frames first: X, neighbour lists, E, F),
    `loss(params, batch)`, `evaluate(params, batch, weight)` -> (per-frame predictions, weighted sums),
    `metrics(sums, n)`, `report(val metrics, train metrics)`."""

    headline = "force_rmse"  # shown with its ratio to `reference_std` on the progress bar

    def __init__(self, potential, system, ds, pre):
        self.ds, self.pre = ds, pre
        self.species = np.asarray(system.topology.species)
        self.species_names = list(system.topology.species_names)
        self.counts = np.bincount(self.species, minlength=len(self.species_names)).astype(float)
        dtype = system.positions.dtype
        x = jnp.asarray(ds.positions, dtype)
        self.data = (x, potential.neighbors.allocate(x), jnp.asarray(ds.energies, dtype), jnp.asarray(ds.forces, dtype))
        self.reference_std = float(np.std(ds.forces))
        self.onehot = jax.nn.one_hot(jnp.asarray(self.species), len(self.species_names))

        def predict(params, x, nbrs):
            e, g = jax.value_and_grad(potential.energy, argnums=1)(params, x, nbrs)
            return e, -g

        self.predict = jax.vmap(predict, (None, 0, 0))

    def loss(self, params, batch):
        x, nbrs, e_ref, f_ref = batch
        e, f = self.predict(params, x, nbrs)
        return (self.pre.energy_weight * jnp.mean(((e - e_ref) / self.ds.n_atoms) ** 2)
                + self.pre.force_weight * jnp.mean((f - f_ref) ** 2))

    def evaluate(self, params, batch, weight):
        """Per-frame energy predictions and weighted sums: |dE|/N, (dE/N)^2, dF^2 per species."""
        x, nbrs, e_ref, f_ref = batch
        e, f = self.predict(params, x, nbrs)
        de = (e - e_ref) / self.ds.n_atoms
        df2 = jnp.sum((f - f_ref) ** 2, axis=-1) @ self.onehot  # (B, S)
        return e, {"abs_de": jnp.sum(weight * jnp.abs(de)), "de2": jnp.sum(weight * de * de),
                   "df2": jnp.sum(weight[:, None] * df2, axis=0)}

    def metrics(self, sums, n):
        mse_f = float(sums["df2"].sum()) / (3 * self.counts.sum() * n)
        return {"loss": self.pre.energy_weight * float(sums["de2"]) / n + self.pre.force_weight * mse_f,
                "force_rmse": math.sqrt(mse_f), "energy_mae_per_atom": float(sums["abs_de"]) / n,
                "force_rmse_by_species": np.sqrt(sums["df2"] / (3 * self.counts * n))}

    def initial_output(self, params, evaluator, train):
        """A fresh network's readout scaled to the reference forces and its energy offsets fitted on the
        training frames `train` (`evaluator`'s)."""
        params = _scale_output(params, OUTPUT_SCALE_LENGTH * float(np.sqrt(np.mean(self.ds.forces[train] ** 2))))
        return _fit_offsets(params, evaluator.predictions(params), self.ds.energies[train], self.species,
                            len(self.species_names))

    def report(self, m_val, m_train):
        return {
            "val_force_rmse": m_val["force_rmse"],
            "val_energy_mae_per_atom": m_val["energy_mae_per_atom"],
            "teacher_force_std": self.reference_std,
            "val_force_rmse_over_teacher_force_std": m_val["force_rmse"] / self.reference_std,
            "val_force_rmse_by_species": dict(zip(self.species_names, m_val["force_rmse_by_species"].tolist())),
            "train_force_rmse": m_train["force_rmse"],
            "train_energy_mae_per_atom": m_train["energy_mae_per_atom"],
            "teacher_energy_std_per_atom": float(np.std(self.ds.energies / self.ds.n_atoms)),
            "n_frames": self.ds.n_frames, "n_atoms": self.ds.n_atoms,
        }


class Dipoles:
    """Dipole matching of a learned dipole model (params {DIPOLE_KEY: ...}) to reference total dipoles
    M_ref (F, 3) in e nm: per batch the mean over frames and components of (M - M_ref)^2 / n_molecules,
    a squared error per molecule (a total dipole's spread grows like the square root of the molecule count).
    A fit target like `EnergyForces`."""

    headline = "dipole_rmse"

    def __init__(self, model, system, ds, dipoles):
        self.ds = ds
        self.n_molecules = system.topology.n_molecules
        dtype = system.positions.dtype
        x = jnp.asarray(ds.positions, dtype)
        self.data = (x, model.neighbors.allocate(x), jnp.asarray(dipoles, dtype))
        self.reference_std = float(np.std(dipoles)) / math.sqrt(self.n_molecules)
        self.predict = jax.vmap(lambda p, x, nbrs: model.dipole(p[DIPOLE_KEY], x, nbrs), (None, 0, 0))

    def loss(self, params, batch):
        x, nbrs, m_ref = batch
        return jnp.mean((self.predict(params, x, nbrs) - m_ref) ** 2) / self.n_molecules

    def evaluate(self, params, batch, weight):
        x, nbrs, m_ref = batch
        m = self.predict(params, x, nbrs)
        return m, {"dm2": jnp.sum(weight[:, None] * (m - m_ref) ** 2)}

    def metrics(self, sums, n):
        mse = float(sums["dm2"]) / (3 * n * self.n_molecules)
        return {"loss": mse, "dipole_rmse": math.sqrt(mse)}

    def report(self, m_val, m_train):
        return {
            "val_dipole_rmse": m_val["dipole_rmse"], "val_dipole_rmse_debye": m_val["dipole_rmse"] / DEBYE,
            "teacher_dipole_std": self.reference_std,
            "val_dipole_rmse_over_teacher_dipole_std": m_val["dipole_rmse"] / self.reference_std,
            "train_dipole_rmse": m_train["dipole_rmse"],
            "n_frames": self.ds.n_frames, "n_atoms": self.ds.n_atoms, "n_molecules": self.n_molecules,
        }


class _Evaluator:
    """Metrics of a parameter set on a fixed subset of frames, in padded chunks (one compilation)."""

    def __init__(self, evaluate, data, indices, chunk, metrics):
        self.evaluate, self.data, self.metrics = evaluate, data, metrics
        self.n = len(indices)
        pad = (-self.n) % chunk
        idx = np.concatenate([indices, np.repeat(indices[:1], pad)])
        weight = np.concatenate([np.ones(self.n), np.zeros(pad)])
        self.chunks = [(jnp.asarray(idx[i:i + chunk]), jnp.asarray(weight[i:i + chunk]))
                       for i in range(0, len(idx), chunk)]

    def predictions(self, params):
        """The target's per-frame predictions (energies, dipoles) on these frames."""
        return np.concatenate([np.asarray(self.evaluate(params, _take(self.data, i), w)[0])
                               for i, w in self.chunks])[:self.n]

    def __call__(self, params):
        sums = None
        for i, w in self.chunks:
            s = self.evaluate(params, _take(self.data, i), w)[1]
            sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
        return self.metrics(jax.tree.map(np.asarray, sums), self.n)


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
