"""From a validated Config to the objects the library works with: system, potential, parameters, the
replica sampler, the NVE segment and its adjoint, the truncation window.

The one place that maps config keys to library calls: every command (simulate, train, gradcheck,
pretrain) builds exactly the same thing from the same config, and the library modules below take
explicit arguments, never the config.
"""

import logging

import jax
import jax.numpy as jnp

from dmd_dist import potentials, systems
from dmd_dist.adjoint import Segment
from dmd_dist.driver import OverflowCounter
from dmd_dist.errors import InputError
from dmd_dist.integrators import Dynamics
from dmd_dist.observables.static import radial_distribution
from dmd_dist.params import assign, flat_names
from dmd_dist.potentials.dipole import DIPOLE_KEY, CoulombCharges, FixedCharges, WithDipole, learned_dipole
from dmd_dist.potentials.pretrained import pretrained_potential, saved_classical_params, saved_dipole
from dmd_dist.potentials.species import per_species
from dmd_dist.records import recorder
from dmd_dist.sampler import advance, init_chains, langevin_sampler
from dmd_dist.segments import adjoint_strategy
from dmd_dist.window import gradient_growth, parameter_directions, suggest_window

log = logging.getLogger("dmd_dist")


def set_precision(precision: str):
    """Must run before any array is created."""
    jax.config.update("jax_enable_x64", precision == "float64")


def build_system(cfg, key):
    """The unequilibrated system the config describes (lattice start or structure file)."""
    s = cfg.system
    temperature = cfg.sampling.temperature
    if s.kind == "lj_fluid":
        return systems.lattice_fluid(s.n_atoms, temperature, key, s.element, s.density, s.box)
    if s.kind == "water_box":
        return systems.water_lattice(s.n_molecules, temperature, key, s.density, s.box)
    return systems.from_file(s.path, temperature, key)


def build_potential(cfg, system):
    """(potential, params) of `[potential]`: an MPNN from its checkpoint or initialisation; a classical
    form with its default parameters, then those of `checkpoint`, then `parameters`."""
    p = cfg.potential
    common = dict(cutoff=p.cutoff, skin=p.skin, neighbor_mode=p.neighbor_list, capacity_factor=p.capacity_factor)
    if p.kind == "mpnn":
        if p.checkpoint is not None:  # pre-trained parameters (and architecture) from `dmd-dist pretrain`
            return pretrained_potential(system, p)
        return potentials.mpnn_potential(system, p.preset, seed=p.init_seed, **common)
    if p.kind == "lennard_jones":
        potential, params = potentials.lennard_jones_potential(system, p.sigma, p.epsilon, shift=bool(p.shift),
                                                               switch_onset=p.switch_onset, **common)
    elif p.kind == "morse":
        potential, params = potentials.morse_potential(system, p.depth, p.alpha, p.r0, shift=bool(p.shift),
                                                       switch_onset=p.switch_onset, **common)
    elif p.kind == "spc_fw":
        potential, params = potentials.spc_fw_potential(system, coulomb_alpha=p.coulomb_alpha,
                                                        switch_onset=p.switch_onset, **common)
    else:
        raise InputError("potential.kind", f"unknown kind {p.kind!r}")
    names = system.topology.species_names
    if p.checkpoint is not None:
        params = saved_classical_params(p, params, names)
    try:
        params = assign(params, p.parameters or {}, names)
    except KeyError as e:
        raise InputError(f"potential.parameters.{e.args[0]}", "no such parameter; parameters are "
                         f"{[n for n, _, _ in flat_names(params, names)]}") from None
    return potential, params


def rdf_range(cfg, system):
    """r_max (nm) of the `[observables]` RDF grid: `rdf_r_max`, or half the shortest box edge; checked
    against the box here, outside any jitted step (InputError naming the key)."""
    r_max = cfg.observables.rdf_r_max or 0.5 * float(min(system.box))
    try:
        radial_distribution(system.positions, system.box, r_max, cfg.observables.rdf_bins)
    except ValueError as e:
        raise InputError("observables.rdf_r_max", str(e)) from None
    return r_max


def build_teacher(cfg, system):
    """(potential, params) of the `[pretrain] teacher`; errors name its keys."""
    try:
        return build_potential(cfg.model_copy(update={"potential": cfg.pretrain.teacher}), system)
    except InputError as e:  # the builders report against [potential]
        key = e.key.replace("potential", "pretrain.teacher", 1) if e.key.startswith("potential") else e.key
        raise InputError(key, e.problem) from None


def build_dipole(cfg, system, potential, params):
    """(potential with the dipole model of `[dipole]`, params): a learned model's parameters join the
    potential's under DIPOLE_KEY ("dipole").  Under the default model a potential without charges stays as
    it is: it has no dipole (and so no IR)."""
    d = cfg.dipole
    if d.model == "coulomb":
        return (WithDipole(potential, CoulombCharges(system)), params) if "coulomb" in params else (potential, params)
    if d.model == "charges":
        charges = per_species(d.charges, system, "dipole.charges")[system.topology.species]
        return WithDipole(potential, FixedCharges(system, charges)), params
    cutoff = cfg.potential.cutoff if d.cutoff is None else d.cutoff
    if cutoff > potential.neighbors.cutoff:
        raise InputError("dipole.cutoff", f"{cutoff} nm exceeds the potential's neighbour-list cutoff "
                                          f"{potential.neighbors.cutoff} nm (the dipole model uses that list)")
    if d.checkpoint is not None:
        model, dparams = saved_dipole(system, d, potential.neighbors)
    else:
        model, dparams = learned_dipole(system, d.preset, cutoff, reference_charges=d.charges,
                                        atomic_dipoles=d.atomic_dipoles, seed=d.init_seed,
                                        neighbors=potential.neighbors)
    return WithDipole(potential, model, DIPOLE_KEY), {**params, DIPOLE_KEY: dparams}


def build(cfg):
    """(system, potential, params, key): the prepared (relaxed, equilibrated) start of every replica."""
    set_precision(cfg.precision)
    key = jax.random.PRNGKey(cfg.seed)
    k_build, k_prep, key = jax.random.split(key, 3)
    system = build_system(cfg, k_build)
    potential, params = build_dipole(cfg, system, *build_potential(cfg, system))
    if cfg.system.equilibration_steps:
        melt = 2.0 * cfg.sampling.temperature if (cfg.system.melt and cfg.system.kind != "file") else None
        preparer = (potential, params) if cfg.system.prepare_with == "potential" else build_teacher(cfg, system)
        system = systems.prepare(system, *preparer, cfg.sampling.temperature, k_prep, cfg.system.equilibration_steps,
                                 cfg.sampling.dt, cfg.system.friction, melt)
    return system, potential, params, key


def sampler(cfg, system, potential):
    """The replica chains' NVT integrator (`[sampling]`)."""
    smp = cfg.sampling
    return langevin_sampler(system, potential, smp.dt, smp.temperature, smp.friction)


def chains(cfg, system, potential, params, key, count, offset=0):
    """Replicas offset..offset+count-1 at `sampling.temperature`, not yet equilibrated."""
    return init_chains(sampler(cfg, system, potential), system, potential, params, key, count,
                       cfg.sampling.temperature, offset)


def segment(cfg, system, potential, channels):
    """The NVE segment `[segments]` asks for (centre-of-mass removal, wrapping), recording `channels`."""
    seg = cfg.segments
    dyn = Dynamics(potential, system.masses, seg.remove_com, None if seg.wrap == "none" else seg.wrap, system.box,
                   jnp.asarray(system.topology.molecule), system.topology.n_molecules)
    return Segment(dyn, seg.dt, seg.steps, seg.record_every, recorder(channels, system, potential))


def gradient_batching(cfg, platform=None):
    """"vmap" or "map" for `replicas.gradient_batching` on `platform` (default: that of the first device).
    "auto" maps in float64 on CPUs, where the vmapped backward pass streams the most memory (an iteration
    8-21% cheaper in benchmarks/gradient_batching.py), and vmaps otherwise (float32 on CPUs: 6% dearer mapped)."""
    setting = cfg.replicas.gradient_batching
    if setting != "auto":
        return setting
    cpu = (platform or jax.devices()[0].platform) == "cpu"
    return "map" if cpu and cfg.precision == "float64" else "vmap"


def adjoint(cfg):
    """The gradient strategy of `segments.adjoint`."""
    seg = cfg.segments
    return adjoint_strategy(seg.adjoint, seg.steps, seg.record_every)


def resolve_window(cfg, system, potential, params, key, min_replicas=8):
    """For `segments.window = "auto"`: scan windows up to `segments.steps` on fresh replica frames and
    return (cfg with `steps` set to the suggested window, the WindowScan); other configs pass through.
    Every command that runs windows calls this, so "auto" means the same in all of them."""
    if cfg.segments.window != "auto":
        return cfg, None
    count = max(cfg.replicas.count, min_replicas)
    nvt = sampler(cfg, system, potential)
    states = chains(cfg, system, potential, params, jax.random.fold_in(key, 2**31 - 1), count)
    states = advance(nvt, potential, params, states, max(cfg.sampling.equilibration_steps, 1), OverflowCounter(),
                     cfg.potential.capacity_factor)
    seg = segment(cfg, system, potential, ("vacf",))
    times, g = gradient_growth(seg, params, states, parameter_directions(params), OverflowCounter(),
                               cfg.potential.capacity_factor)
    scan = suggest_window(times, g)
    every = cfg.segments.record_every
    steps = max(every, int(round(scan.suggested / cfg.segments.dt / every)) * every)
    log.info("segments.window = \"auto\": %d steps (%.4g ps), the maximum of the gradient's signal-to-noise "
             "over %d replicas", steps, steps * cfg.segments.dt, count)
    return cfg.model_copy(update={"segments": cfg.segments.model_copy(update={"steps": steps, "window": None})}), scan
