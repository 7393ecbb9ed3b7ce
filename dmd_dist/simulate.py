"""`simulate`: forward-only run of a config.  Replicas sample start frames with Langevin NVT chains, an
NVE segment runs from every frame, and observables with standard errors go to `observables.json`.

Replica r draws all its randomness from fold_in(key, r), so results do not depend on how replicas are
batched.  The per-frame loop is in Python (jitted chunks inside) so that neighbour-list overflows are
answered between chunks and progress can be shown.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist import integrators
from dmd_dist.assemble import build
from dmd_dist.driver import OverflowCounter, run_checked, scan_steps
from dmd_dist.errors import InputError
from dmd_dist.losses import read_curve
from dmd_dist.observables import (green_kubo_viscosity, linear_slope, mean_stderr, pressure_tensor, radial_distribution,
                                  shear_stress_acf)
from dmd_dist.plots import plot_curves
from dmd_dist.potentials.dipole import fixed_charge_dipole
from dmd_dist.progress import progress_bar
from dmd_dist.sampler import advance, init_chains, sampling_integrator
from dmd_dist.segments import segment_dynamics
from dmd_dist.train.config import dump_config
from dmd_dist.units import (BOLTZMANN, KJ_PER_MOL_NM3_TO_BAR, KJ_PS_PER_MOL_NM3_TO_MPA_S,
                            NM2_PER_PS_TO_1E9_M2_PER_S)

log = logging.getLogger("dmd_dist")


def segment_integrator(cfg, system, potential):
    make = integrators.leapfrog if cfg.segments.integrator == "leapfrog" else integrators.velocity_verlet
    return make(segment_dynamics(cfg, system, potential), cfg.segments.dt)


def simulate(cfg, workdir, progress=None, params=None):
    """Run the config forward; write config.toml, observables.json, plots/*.png, trajectory.extxyz into `workdir`.

    `params`: the potential's parameters (default: the config's), e.g. a teacher's or a trained model's;
    the start configuration is still prepared with the config's parameters, then sampled with these.
    """
    t_start = time.perf_counter()
    # Target curves are drawn with the model's; read them first: bad input must stop before anything is written.
    target_curves = {t.observable: read_curve(t.file, f"targets.{i}.file") for i, t in enumerate(cfg.targets) if t.file}
    system, potential, default_params, key = build(cfg)
    params = default_params if params is None else params
    rdf = rdf_function(cfg, system)  # checks the grid against the box before anything is written
    n_rep, smp, seg = cfg.replicas.count, cfg.sampling, cfg.segments
    dof = system.degrees_of_freedom
    nvt = sampling_integrator(cfg, system, potential)
    nve = segment_integrator(cfg, system, potential)
    masses = system.masses

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.toml").write_text(dump_config(cfg))
    log.info("system: %d atoms, box %s nm, density %.4f g/cm^3; %d replicas x %d frames, NVE %d x %g ps",
             system.n_atoms, np.round(np.asarray(system.box), 4).tolist(), system.density, n_rep, smp.frames,
             seg.steps, seg.dt)

    states = init_chains(cfg, system, potential, params, key, n_rep)
    counter = OverflowCounter()

    def temperature(v):
        return 2.0 * integrators.kinetic_energy(v, masses) / (dof * BOLTZMANN)

    charges = _charges(params, system)
    molecule = jnp.asarray(system.topology.molecule)
    stress = wants_viscosity(cfg)

    def one_frame(s):
        s, t_nvt = scan_steps(nvt.step, params, s, smp.steps_between_frames, lambda s: temperature(s.velocity))
        x0, v0 = s.position, s.velocity

        def run(sign):
            """NVE from (x0, sign v0); records with the velocity sign restored (sign -1: the past, reversed)."""
            def record(x):
                v = sign * nve.velocity(x)
                out = {"pe": potential.energy(params, x.position, x.neighbors),
                       "ke": integrators.kinetic_energy(v, masses),
                       "vacf": jnp.mean(jnp.sum(v * v0, axis=-1)),  # v(0).v(t) from the frame (the paper's)
                       "msd": jnp.mean(jnp.sum((x.position - x0) ** 2, axis=-1))}
                if charges is not None:  # total dipole, molecules made whole (any wrapping is harmless)
                    out["dipole"] = fixed_charge_dipole(x.position, charges, molecule, masses, system.box)
                if stress:
                    virial = potential.virial(params, x.position, x.neighbors)
                    out["pressure"] = pressure_tensor(virial, v, masses, system.volume)
                return out

            start = nve.init(params, x0, sign * v0, s.neighbors)
            end, rec = scan_steps(nve.step, params, start, seg.steps, record, seg.record_every)
            nbrs = dataclasses.replace(end.neighbors, rebuilds=end.neighbors.rebuilds - s.neighbors.rebuilds)
            return nbrs, jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), record(start), rec)

        nbrs_end, rec = run(1.0)
        if seg.bidirectional:  # join the reversed past to the future at the shared frame: 2K+1 records
            nbrs_past, past = run(-1.0)
            rec = jax.tree.map(lambda b, f: jnp.concatenate([b[:0:-1], f]), past, rec)
            nbrs_end = dataclasses.replace(  # either half's overflow counts, and both halves' rebuilds
                jax.tree.map(jnp.maximum, nbrs_end, nbrs_past), rebuilds=nbrs_end.rebuilds + nbrs_past.rebuilds)
        return s, (nbrs_end, t_nvt, rec)

    frame = jax.jit(jax.vmap(one_frame))

    states = advance(cfg, system, potential, params, states, smp.equilibration_steps, counter)
    t_nvt, recs, starts, rebuilds = [], [], [], 0
    traj = workdir / "trajectory.extxyz"
    traj.unlink(missing_ok=True)
    bar = progress_bar(smp.frames, "frames", "frame", cfg.output.progress if progress is None else progress)
    t_md = time.perf_counter()
    for i in range(smp.frames):
        states, (nve_nbrs, t, rec) = run_checked(frame, states, potential.neighbors, counter,
                                                 cfg.potential.capacity_factor)
        t_nvt.append(np.asarray(t))
        recs.append(jax.tree.map(np.asarray, rec))
        starts.append(np.asarray(states.position))
        rebuilds += int(jnp.sum(nve_nbrs.rebuilds))
        if cfg.output.trajectory:
            _append_frame(traj, system, states, i)
        bar.set_postfix(T_nvt=f"{t_nvt[-1].mean():.1f}K", T_nve=f"{temperature_of(rec['ke'], dof).mean():.1f}K")
        bar.update()
    bar.close()
    md_seconds = time.perf_counter() - t_md

    t_nvt = np.stack(t_nvt, 1)  # (replica, frame, step)
    # (segment, record[, 3]) with segment = (replica, frame) flattened
    rec = {k: np.stack([r[k] for r in recs], 1).reshape((n_rep * smp.frames,) + recs[0][k].shape[1:])
           for k in recs[0]}
    pe, ke = rec["pe"], rec["ke"]
    dt_rec = seg.record_every * seg.dt
    n_rec = seg.steps // seg.record_every
    times = np.arange(-n_rec if seg.bidirectional else 0, n_rec + 1) * dt_rec
    e_tot = (pe + ke) / system.n_atoms
    obs = {**dynamical_observables(rec, times, seg.wrap == "none", seg.bidirectional, smp.temperature,
                                   system.volume),
        "temperature_nvt": _entry(t_nvt.mean(-1), "K"),
        "temperature_nve": _entry(temperature_of(ke, dof).mean(-1), "K"),
        "potential_energy": _entry(pe.mean(-1) / system.n_atoms, "kJ/mol/atom"),
        "energy_drift": _entry(linear_slope(times, e_tot), "kJ/mol/atom/ps"),
        "energy_fluctuation": _entry(e_tot.std(-1), "kJ/mol/atom"),
        "density": {"value": system.density, "stderr": 0.0, "unit": "g/cm^3"},
        **rdf(np.stack(starts, 1).reshape((-1,) + starts[0].shape[1:])),
        "neighbor_reallocations": {"value": counter.reallocations, "stderr": 0.0, "unit": "count"},
        "neighbor_rebuilds_nve": {"value": rebuilds, "stderr": 0.0, "unit": "count"},
    }
    (workdir / "observables.json").write_text(json.dumps(obs, indent=2) + "\n")
    plot_curves(obs, workdir / "plots", target_curves)
    md_steps = n_rep * smp.frames * (smp.steps_between_frames + seg.steps)
    run = {
        "n_atoms": system.n_atoms, "replicas": n_rep, "frames": smp.frames, "md_steps": md_steps,
        "md_seconds": md_seconds, "total_seconds": time.perf_counter() - t_start,
        "atom_steps_per_second": md_steps * system.n_atoms / md_seconds, "devices": [str(d) for d in jax.devices()],
    }
    (workdir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    for name, o in obs.items():
        if "x" not in o:
            log.info("%-24s %.6g ± %.2g %s", name, o["value"], o["stderr"], o["unit"])
    log.info("%d MD steps in %.1f s (%.3g atom-steps/s); results in %s", md_steps, md_seconds,
             run["atom_steps_per_second"], workdir)
    return obs


def dynamical_observables(rec, times, unwrapped, bidirectional, temperature=None, volume=None):
    """Diffusion (Green-Kubo and Einstein), VACF and VDOS from the segments' records (the t >= 0 half of
    bidirectional windows), and the IR spectrum from the total dipole over the whole window; standard
    errors over segments."""
    from dmd_dist.observables import spectra
    from dmd_dist.observables.transport import green_kubo_diffusion

    dt = float(times[1] - times[0])
    out = {}
    if "dipole" in rec:
        out["ir"] = _ir(rec["dipole"], dt, temperature, volume)
    if "pressure" in rec:
        out |= _viscosity(rec["pressure"], dt, temperature, volume)
    if bidirectional:
        future = times >= 0
        rec, times = {k: v[:, future] for k, v in rec.items() if k not in ("dipole", "pressure")}, times[future]
    d_gk = np.asarray(jax.vmap(lambda c: green_kubo_diffusion(c, dt))(jnp.asarray(rec["vacf"])))
    vacf_mean, vacf_err = rec["vacf"].mean(0), _stderr_curve(rec["vacf"])
    n_grid = max(8000, 2 * len(times))
    vdos = np.asarray(spectra.vibrational_dos(jnp.asarray(vacf_mean), dt, n_grid))
    grid = np.asarray(spectra.wavenumber_grid(dt, n_grid))
    keep = grid <= min(grid[n_grid // 2], 4000.0)
    out |= {
        "diffusion": _with_si(_entry(d_gk, "nm^2/ps")),
        "vacf": {"x": times.tolist(), "value": vacf_mean.tolist(), "stderr": vacf_err.tolist(), "x_unit": "ps",
                 "unit": "nm^2/ps^2"},
        "vdos": {"x": grid[keep].tolist(), "value": vdos[keep].tolist(), "stderr": None, "x_unit": "cm^-1",
                 "unit": "cm"},
    }
    if unwrapped:
        # Einstein: slope of the frame-origin MSD over the second half of the window (past the ballistic part).
        half = times >= times[-1] / 2
        slopes = np.polyfit(times[half], rec["msd"][:, half].T, 1)[0]
        out["diffusion_msd"] = _with_si(_entry(slopes / 6.0, "nm^2/ps"))
    return out


def rdf_function(cfg, system):
    """positions (frames, N, 3) -> {"rdf": curve, "rdf_A-B": curve per species pair (several species)}:
    g(r) per frame, mean and standard error over frames ({} when `observables.rdf` is off)."""
    ocfg = cfg.observables
    if not ocfg.rdf:
        return lambda positions: {}
    box = np.asarray(system.box)
    r_max = ocfg.rdf_r_max or 0.5 * float(box.min())
    species, names = np.asarray(system.topology.species), system.topology.species_names
    pairs = {"rdf": (None, None)}
    if len(names) > 1:
        pairs |= {f"rdf_{names[a]}-{names[b]}": (species == a, species == b)
                  for a in range(len(names)) for b in range(a, len(names))}
    try:
        radial_distribution(system.positions, box, r_max, ocfg.rdf_bins)
    except ValueError as e:
        raise InputError("observables.rdf_r_max", str(e)) from None

    def curves(positions):
        out = {}
        for name, (mask_a, mask_b) in pairs.items():
            g_of = jax.jit(jax.vmap(lambda x: radial_distribution(x, box, r_max, ocfg.rdf_bins, mask_a, mask_b)))
            r, g = (np.asarray(a) for a in g_of(jnp.asarray(positions)))
            out[name] = {"x": r[0].tolist(), "value": g.mean(0).tolist(), "stderr": _stderr_curve(g).tolist(),
                         "x_unit": "nm", "unit": "1"}
        return out

    return curves


def wants_viscosity(cfg):
    return cfg.observables.viscosity or any(t.observable == "viscosity" for t in cfg.targets)


def _viscosity(pressures, dt, temperature, volume):
    """Green-Kubo shear viscosity per segment (stress ACF over all origins of the whole window, integrated
    to its end) and the mean pressure; standard errors over segments."""
    acf = jax.vmap(lambda p: shear_stress_acf(p))(jnp.asarray(pressures))
    eta = np.asarray(jax.vmap(lambda c: green_kubo_viscosity(c, dt, volume, temperature))(acf))
    p_mean = np.trace(pressures, axis1=-2, axis2=-1).mean(-1) / 3.0
    return {"viscosity": _entry(eta * KJ_PS_PER_MOL_NM3_TO_MPA_S, "mPa s"),
            "pressure": _entry(p_mean * KJ_PER_MOL_NM3_TO_BAR, "bar")}


def _with_si(entry):
    """A diffusion entry in nm^2/ps, with the same in 1e-9 m^2/s alongside."""
    f = NM2_PER_PS_TO_1E9_M2_PER_S
    return entry | {"si": {"value": entry["value"] * f, "stderr": entry["stderr"] * f, "unit": "1e-9 m^2/s"}}


def _ir(dipoles, dt, temperature, volume):
    """IR spectrum per segment (paper pipeline), averaged; 0-4000 cm^-1."""
    from dmd_dist.observables import spectra

    n_grid = max(8000, 2 * dipoles.shape[1])
    spec = np.asarray(jax.vmap(lambda m: spectra.ir_spectrum(spectra.dipole_derivative_acf(m, dt), dt, temperature,
                                                             volume, n_grid=n_grid))(jnp.asarray(dipoles)))
    grid = np.asarray(spectra.wavenumber_grid(dt, n_grid))
    keep = grid <= min(grid[n_grid // 2], 4000.0)
    return {"x": grid[keep].tolist(), "value": spec.mean(0)[keep].tolist(), "stderr": _stderr_curve(spec)[keep].tolist(),
            "x_unit": "cm^-1", "unit": "cm^-1"}


def _charges(params, system):
    """Per-atom fixed charges if the potential has them (the dipole for IR), else None."""
    if "coulomb" not in params:
        return None
    return jnp.asarray(params["coulomb"]["charge"])[jnp.asarray(system.topology.species)]


def _stderr_curve(samples):
    if samples.shape[0] < 2:
        return np.full(samples.shape[1], np.nan)
    return samples.std(0, ddof=1) / np.sqrt(samples.shape[0])


def temperature_of(kinetic, dof):
    return 2.0 * np.asarray(kinetic) / (dof * BOLTZMANN)


def _entry(blocks, unit):
    """Observable from per-(replica, frame) block values: mean and standard error over blocks."""
    value, stderr = mean_stderr(blocks)
    return {"value": value, "stderr": stderr, "unit": unit}


def _append_frame(path, system, states, frame_index):
    """Replica 0's NVT frame as extended XYZ (Angstrom; velocities in ASE units)."""
    import ase
    import ase.io
    from ase import units as ase_units

    top = system.topology
    atoms = ase.Atoms(
        symbols=[top.species_names[s] for s in top.species],
        positions=np.asarray(states.position[0]) * 10.0,
        cell=np.asarray(system.box) * 10.0,
        pbc=True,
        masses=np.asarray(system.masses),
    )
    atoms.set_velocities(np.asarray(states.velocity[0]) / 100.0 / ase_units.fs)
    atoms.info["frame"] = frame_index
    ase.io.write(path, atoms, format="extxyz", append=True)
