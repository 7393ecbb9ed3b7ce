"""`simulate`: forward-only run of a config.  Replicas sample start frames with Langevin NVT chains, an
NVE window runs from every frame (the same engine and records as `train`: `segments.run_window`,
`records.py`), and observables with standard errors go to `observables.json`.

The replicas are shared by the process's devices (the most of them that divide `replicas.count`), each
running its own as one vectorised batch, as `train` does (mesh.py).  Replica r draws all its
randomness from fold_in(key, r), so results do not depend on how replicas are batched or placed (to
rounding).  The per-frame loop is in Python (jitted chunks inside) so that neighbour-list overflows are
answered between chunks and progress can be shown.
"""

import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist import assemble
from dmd_dist.adjoint import DirectAdjoint
from dmd_dist.assemble import build
from dmd_dist.config import dump_config
from dmd_dist.driver import OverflowCounter, run_checked, scan_steps
from dmd_dist.errors import Diverged
from dmd_dist.integrators import kinetic_energy
from dmd_dist.losses import curve_target, read_curve
from dmd_dist.mesh import from_process_local, per_device, relister, replica_mesh, replicate, sharing_devices
from dmd_dist.observables import (green_kubo_viscosity, jackknife, linear_slope, mean_stderr, radial_distribution,
                                  shear_stress_acf, spectra)
from dmd_dist.observables.transport import green_kubo_diffusion
from dmd_dist.plots import plot_curves
from dmd_dist.progress import progress_bar
from dmd_dist.records import frame_context, has_dipole
from dmd_dist.sampler import advance
from dmd_dist.segments import run_window
from dmd_dist.units import KJ_PER_MOL_NM3_TO_BAR, KJ_PS_PER_MOL_NM3_TO_MPA_S, NM2_PER_PS_TO_1E9_M2_PER_S, kinetic_temperature

log = logging.getLogger("dmd_dist")


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
    cfg, _ = assemble.resolve_window(cfg, system, potential, params, key)
    rdf = rdf_function(cfg, system)  # checks the grid against the box before anything is written
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.toml").write_text(dump_config(cfg))
    log.info("system: %d atoms, box %s nm, density %.4f g/cm^3; %d replicas x %d frames, NVE %d x %g ps",
             system.n_atoms, np.round(np.asarray(system.box), 4).tolist(), system.density, cfg.replicas.count,
             cfg.sampling.frames, cfg.segments.steps, cfg.segments.dt)

    counter = OverflowCounter()
    runs = sample_windows(cfg, system, potential, params, key, counter, workdir,
                          cfg.output.progress if progress is None else progress)
    obs = observables(cfg, system, runs, rdf, counter)
    (workdir / "observables.json").write_text(json.dumps(obs, indent=2) + "\n")
    plot_curves(obs, workdir / "plots", target_curves)
    _write_run_summary(cfg, system, runs, obs, workdir, t_start)
    warn_if_unstable(obs["temperature_nvt"]["value"], cfg.sampling.temperature)
    return obs


def record_channels(cfg, potential):
    """What `simulate` records in every window: energies, VACF and MSD always, the dipole when the
    potential has a dipole model (IR), the pressure tensor when viscosity is asked for."""
    channels = ["vacf", "msd", "pe", "ke"]
    if has_dipole(potential):
        channels.append("dipole")
    if wants_viscosity(cfg):
        channels.append("pressure")
    return tuple(channels)


def sample_windows(cfg, system, potential, params, key, counter, workdir, progress):
    """Every replica: equilibrate its chain, then `sampling.frames` times sample a frame and run the NVE
    window from it.  Returns a dict of numpy arrays: "records" (channel -> (segment, record[, ...]),
    segment = (replica, frame) flattened), "t_nvt" (replica, frame, step), "starts" (segment, N, 3), the
    NVE list rebuild count and the MD wall time."""
    n_rep, smp, seg_cfg = cfg.replicas.count, cfg.sampling, cfg.segments
    dof, masses = system.degrees_of_freedom, system.masses
    nvt = assemble.sampler(cfg, system, potential)
    channels = record_channels(cfg, potential)
    seg = assemble.segment(cfg, system, potential, channels)

    def one_frame(p, s):
        s, t_nvt = scan_steps(nvt.step, p, s, smp.steps_between_frames,
                              lambda s: kinetic_temperature(kinetic_energy(s.velocity, masses), dof))
        w = run_window(DirectAdjoint(), seg, p, s.position, s.velocity, s.neighbors,
                       frame_context(channels, s.position, s.velocity), seg_cfg.bidirectional)
        lists = (w.neighbors,) + ((w.neighbors_backward,) if seg_cfg.bidirectional else ())
        rebuilds = sum(n.rebuilds - s.neighbors.rebuilds for n in lists)
        return s, (lists, rebuilds, t_nvt, w.records)

    # Replicas shared by the local devices; replica r's noise is fold_in(key, r) wherever it runs.
    mesh = replica_mesh(sharing_devices(n_rep))
    devices = [str(d) for d in mesh.devices.flat]
    log.info("%d replicas on %d device(s): %s", n_rep, len(devices), ", ".join(devices))
    frame, relist = per_device(one_frame, mesh), relister(potential.neighbors, mesh)
    states = from_process_local(assemble.chains(cfg, system, potential, params, key, n_rep), mesh)
    params = replicate(params, mesh)
    states = advance(nvt, potential, params, states, smp.equilibration_steps, counter, cfg.potential.capacity_factor,
                     mesh, relist)
    t_nvt, recs, starts, rebuilds = [], [], [], 0
    traj = workdir / "trajectory.extxyz"
    traj.unlink(missing_ok=True)
    bar = progress_bar(smp.frames, "frames", "frame", progress)
    t_md = time.perf_counter()
    for i in range(smp.frames):
        states, (_, n_rebuilt, t, rec) = run_checked(lambda s: frame(params, s), states, potential.neighbors,
                                                     counter, cfg.potential.capacity_factor, relist=relist)
        t_nvt.append(np.asarray(t))
        recs.append(jax.tree.map(np.asarray, rec))
        starts.append(np.asarray(states.position))
        rebuilds += int(jnp.sum(n_rebuilt))
        if cfg.output.trajectory:
            _append_frame(traj, system, states, i)
        t_nve = kinetic_temperature(recs[-1]["ke"], dof).mean()
        bar.set_postfix(T_nvt=f"{t_nvt[-1].mean():.1f}K", T_nve=f"{t_nve:.1f}K")
        bar.update()
    bar.close()
    n_seg = n_rep * smp.frames
    return {"records": {k: np.stack([r[k] for r in recs], 1).reshape((n_seg,) + recs[0][k].shape[1:]) for k in recs[0]},
            "t_nvt": np.stack(t_nvt, 1), "starts": np.stack(starts, 1).reshape((n_seg,) + starts[0].shape[1:]),
            "rebuilds": rebuilds, "md_seconds": time.perf_counter() - t_md, "devices": devices}


def observables(cfg, system, runs, rdf, counter):
    """Every observable with its standard error over segments (or frames), as written to observables.json."""
    seg_cfg, dof = cfg.segments, system.degrees_of_freedom
    rec = runs["records"]
    n_rec = seg_cfg.steps // seg_cfg.record_every
    times = np.arange(-n_rec if seg_cfg.bidirectional else 0, n_rec + 1) * seg_cfg.record_every * seg_cfg.dt
    e_tot = (rec["pe"] + rec["ke"]) / system.n_atoms
    failed = failed_windows(seg_cfg, e_tot)
    if failed is not None:
        rec, e_tot = {k: v[~failed] for k, v in rec.items()}, e_tot[~failed]
    pe, ke = rec["pe"], rec["ke"]
    return {
        **dynamical_observables(rec, times, seg_cfg.wrap == "none", seg_cfg.bidirectional, cfg.sampling.temperature,
                                system.volume, water=set(system.topology.species_names) == {"O", "H"},
                                ir_target=next((t for t in cfg.targets if t.observable == "ir"), None)),
        "temperature_nvt": _entry(runs["t_nvt"].mean(-1), "K"),
        "temperature_nve": _entry(kinetic_temperature(ke, dof).mean(-1), "K"),
        "potential_energy": _entry(pe.mean(-1) / system.n_atoms, "kJ/mol/atom"),
        "energy_drift": _entry(linear_slope(times, e_tot), "kJ/mol/atom/ps"),
        "energy_fluctuation": _entry(e_tot.std(-1), "kJ/mol/atom"),
        "density": {"value": system.density, "stderr": 0.0, "unit": "g/cm^3"},
        **rdf(runs["starts"]),
        "neighbor_reallocations": {"value": counter.reallocations, "stderr": 0.0, "unit": "count"},
        "neighbor_rebuilds_nve": {"value": runs["rebuilds"], "stderr": 0.0, "unit": "count"},
        **({} if failed is None else {"failed_windows": {"value": int(failed.sum()), "stderr": 0.0, "unit": "count"}}),
    }


def failed_windows(seg_cfg, e_tot):
    """With `segments.max_energy_error` set, which windows (e_tot: per-atom E = U + K, (window, record)) blew
    up, as `train` judges them: E at an end strays from the frame's by more than the limit, or is not finite.
    They are left out of every observable of the windows and counted; None when the limit is not set."""
    if seg_cfg.max_energy_error is None:
        return None
    frame = e_tot[:, (e_tot.shape[1] - 1) // 2 if seg_cfg.bidirectional else 0]
    error = np.maximum(np.abs(e_tot[:, 0] - frame), np.abs(e_tot[:, -1] - frame))
    failed = ~(error <= seg_cfg.max_energy_error)  # NaN fails too
    if failed.all():
        raise Diverged("segments.max_energy_error", f"every one of the {failed.size} windows broke energy "
                       f"conservation by more than {seg_cfg.max_energy_error} kJ/mol per atom: no observables")
    if failed.any():
        log.warning("%d of %d windows broke energy conservation by more than segments.max_energy_error = %g "
                    "kJ/mol per atom: left out of the observables", failed.sum(), failed.size,
                    seg_cfg.max_energy_error)
    return failed


def warn_if_unstable(t_nvt, thermostat):
    """Log a warning when the NVT frames' mean temperature `t_nvt` lies outside half to twice the thermostat's
    (or is not finite): the model heats up or falls apart there, and the observables describe that, not the
    state asked for.  A small box's own fluctuations stay far inside these bounds (16 waters: 271-332 K at
    298 K, docs/observables.md).  Returns whether it warned."""
    if 0.5 * thermostat <= t_nvt <= 2.0 * thermostat:
        return False
    log.warning("the NVT frames are at %.4g K, the thermostat at %g K: the model is not stable in this run (it "
                "heats up or falls apart, or sampling.dt is too long for it); its observables are not those of "
                "the state asked for", t_nvt, thermostat)
    return True


def _write_run_summary(cfg, system, runs, obs, workdir, t_start):
    """run.json (MD throughput) and the log lines of every scalar observable."""
    n_rep, smp = cfg.replicas.count, cfg.sampling
    md_steps = n_rep * smp.frames * (smp.steps_between_frames + cfg.segments.steps)
    md_seconds = runs["md_seconds"]
    run = {
        "n_atoms": system.n_atoms, "replicas": n_rep, "frames": smp.frames, "md_steps": md_steps,
        "md_seconds": md_seconds, "total_seconds": time.perf_counter() - t_start,
        "atom_steps_per_second": md_steps * system.n_atoms / md_seconds, "devices": runs["devices"],
    }
    (workdir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    for name, o in obs.items():
        if "x" not in o:
            log.info("%-24s %.6g ± %.2g %s", name, o["value"], o["stderr"], o["unit"])
    log.info("%d MD steps in %.1f s (%.3g atom-steps/s); results in %s", md_steps, md_seconds,
             run["atom_steps_per_second"], workdir)


def dynamical_observables(rec, times, unwrapped, bidirectional, temperature=None, volume=None, water=False,
                          ir_target=None):
    """Diffusion (Green-Kubo and Einstein), VACF and VDOS from the segments' records (the t >= 0 half of
    bidirectional windows), and the IR spectrum from the total dipole over the whole window, with the peak
    positions of its bands for water and the loss of `ir_target` (a TargetConfig); standard errors over
    segments."""
    dt = float(times[1] - times[0])
    out = {}
    if "dipole" in rec:
        out["ir"], grid, spec = _ir(rec["dipole"], dt, temperature, volume)
        if water:
            out |= _water_band_peaks(grid, spec)
        if ir_target is not None:
            out["ir_target_loss"] = _target_loss(grid, spec, ir_target)
    if "pressure" in rec:
        out |= _viscosity(rec["pressure"], dt, temperature, volume)
    if bidirectional:
        future = times >= 0
        rec, times = {k: v[:, future] for k, v in rec.items() if k not in ("dipole", "pressure")}, times[future]
    # Each curve computation jitted whole: eagerly, every op is a small program compiled on first use.
    d_gk = np.asarray(jax.jit(jax.vmap(lambda c: green_kubo_diffusion(c, dt)))(jnp.asarray(rec["vacf"])))
    vacf_mean, vacf_err = rec["vacf"].mean(0), _stderr_curve(rec["vacf"])
    n_grid = spectra.grid_size(len(times))
    vdos = np.asarray(jax.jit(lambda c: spectra.vibrational_dos(c, dt, n_grid))(jnp.asarray(vacf_mean)))
    grid = np.asarray(spectra.wavenumber_grid(dt, n_grid))
    keep = spectra.reported_band(grid)
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
    r_max = assemble.rdf_range(cfg, system)
    species, names = np.asarray(system.topology.species), system.topology.species_names
    pairs = {"rdf": (None, None)}
    if len(names) > 1:
        pairs |= {f"rdf_{names[a]}-{names[b]}": (species == a, species == b)
                  for a in range(len(names)) for b in range(a, len(names))}

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
    eta = np.asarray(jax.jit(jax.vmap(lambda p: green_kubo_viscosity(shear_stress_acf(p), dt, volume, temperature)))(
        jnp.asarray(pressures)))
    p_mean = np.trace(pressures, axis1=-2, axis2=-1).mean(-1) / 3.0
    return {"viscosity": _entry(eta * KJ_PS_PER_MOL_NM3_TO_MPA_S, "mPa s"),
            "pressure": _entry(p_mean * KJ_PER_MOL_NM3_TO_BAR, "bar")}


def _with_si(entry):
    """A diffusion entry in nm^2/ps, with the same in 1e-9 m^2/s alongside."""
    f = NM2_PER_PS_TO_1E9_M2_PER_S
    return entry | {"si": {"value": entry["value"] * f, "stderr": entry["stderr"] * f, "unit": "1e-9 m^2/s"}}


def _ir(dipoles, dt, temperature, volume):
    """IR spectrum per segment (paper pipeline), averaged; 0-4000 cm^-1."""
    n_grid = spectra.grid_size(dipoles.shape[1])

    def one(m):
        return spectra.ir_spectrum(spectra.dipole_derivative_acf(m, dt), dt, temperature, volume, n_grid=n_grid)

    spec = np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(dipoles)))
    grid = np.asarray(spectra.wavenumber_grid(dt, n_grid))
    keep = spectra.reported_band(grid)
    return {"x": grid[keep].tolist(), "value": spec.mean(0)[keep].tolist(), "stderr": _stderr_curve(spec)[keep].tolist(),
            "x_unit": "cm^-1", "unit": "cm^-1"}, grid[keep], spec[:, keep]


def _water_band_peaks(grid, spec):
    """Peak positions of water's IR bands in the segment-averaged spectrum, with jackknife standard errors
    over segments (a peak is not a mean of per-segment peaks)."""
    out = {}
    for band, (lo, hi) in spectra.WATER_BANDS.items():
        if np.count_nonzero((grid > lo) & (grid < hi)) >= 3:  # the band lies below the Nyquist limit
            out[f"ir_peak_{band}"] = _entry_from(jackknife(spec, lambda y: spectra.band_peak(grid, y, lo, hi)), "cm^-1")
    return out


def _target_loss(grid, spec, target):
    """The IR target's loss (its file, regions and weight, as `train` computes it) of the segment-averaged
    spectrum, with a jackknife standard error over segments: how far this run is from the target, and how
    sure that is (32 windows of the tiny ML water workflow: an eighth to a quarter of the loss)."""
    loss = curve_target("ir", grid, *read_curve(target.file, "targets.file"), target.regions, target.weight)
    return _entry_from(jackknife(spec, lambda y: float(loss(y))), "1")


def _stderr_curve(samples):
    if samples.shape[0] < 2:
        return np.full(samples.shape[1], np.nan)
    return samples.std(0, ddof=1) / np.sqrt(samples.shape[0])


def _entry(blocks, unit):
    """Observable from per-(replica, frame) block values: mean and standard error over blocks."""
    return _entry_from(mean_stderr(blocks), unit)


def _entry_from(value_stderr, unit):
    value, stderr = value_stderr
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
