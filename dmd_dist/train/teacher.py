"""Teacher data for pre-training: NVT Langevin chains of a classical potential (`[pretrain] teacher`).

The config's system is prepared with the teacher as `assemble.build` prepares it for a run's own
potential; `pretrain.chains` chains per temperature then record `pretrain.frames` frames,
`sampling.steps_between_frames` apart.  The frames are written to `DIR/dataset.extxyz`, tagged with a hash
of what defines them (`data_config`), and reused by a later run of the same config.
"""

import hashlib
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist.assemble import build_system, build_teacher
from dmd_dist.driver import OverflowCounter, run_checked, scan_steps
from dmd_dist.errors import InputError
from dmd_dist.progress import progress_bar
from dmd_dist.sampler import init_chains, langevin_sampler
from dmd_dist.systems import prepare
from dmd_dist.train.dataset import Dataset, dataset_tag, read_dataset, write_dataset

log = logging.getLogger("dmd_dist")


def teacher_setup(cfg):
    """(system, teacher potential, teacher params, key): the config's system, prepared (relaxed, melted,
    equilibrated) with the teacher, as `assemble.build` prepares it for a run's own potential."""
    key = jax.random.PRNGKey(cfg.seed)
    k_build, k_prep, key = jax.random.split(key, 3)
    system = build_system(cfg, k_build)
    teacher, tparams = build_teacher(cfg, system)
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

    def langevin(t):
        return langevin_sampler(system, teacher, smp.dt, t, smp.friction)

    states = init_chains(langevin(smp.temperature), system, teacher, tparams, key, n_chains, chain_t)

    def advance(n_steps):
        def one(p, s, t):
            s, _ = scan_steps(langevin(t).step, p, s, n_steps)
            return s, teacher.energy(p, s.position, s.neighbors)
        run = jax.jit(jax.vmap(one, (None, 0, 0)))  # the parameters an argument (docs/architecture.md)
        return lambda s: run(tparams, s, chain_t)

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


def data_config(cfg):
    """What defines the teacher data: a changed value means new data."""
    d = cfg.model_dump(mode="json")
    pre = d["pretrain"]
    return {"seed": d["seed"], "precision": d["precision"], "system": d["system"], "sampling": d["sampling"],
            "teacher": pre["teacher"], "temperatures": pre["temperatures"], "chains": pre["chains"],
            "frames": pre["frames"]}


def teacher_dataset(cfg, workdir, system, teacher, tparams, k_prep, key, progress=True):
    """(dataset, path): the teacher frames in `workdir`/dataset.extxyz, reused when an earlier run of this
    config wrote them, else sampled and written; either way read back from the file."""
    path = workdir / "dataset.extxyz"
    tag = "cfg" + hashlib.sha256(json.dumps(data_config(cfg), sort_keys=True).encode()).hexdigest()[:16]
    if path.is_file() and dataset_tag(path) == tag:
        try:
            ds = read_dataset(path, key=str(path))
            log.info("teacher data: reusing %s", path)
            return ds, path
        except InputError as e:
            log.warning("teacher data: %s; sampling again", e)
    log.info("teacher data: sampling %s", cfg.pretrain.teacher.kind)
    ds = sample_teacher(cfg, system, teacher, tparams, k_prep, key, progress)
    for d in ds.info:
        d["dataset_config"] = tag
    write_dataset(path, ds)
    return read_dataset(path, key=str(path)), path  # train on exactly what the file holds
