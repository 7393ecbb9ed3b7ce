"""From a validated Config to the objects the library works with: system, potential, parameters.

Keeps the mapping of config keys to library calls in one place, so that every command (simulate, and
later train, gradcheck) builds exactly the same thing from the same config.
"""

import jax

from dmd_dist import potentials, systems
from dmd_dist.errors import InputError


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
    p = cfg.potential
    common = dict(cutoff=p.cutoff, skin=p.skin, neighbor_mode=p.neighbor_list, capacity_factor=p.capacity_factor)
    if p.kind == "lennard_jones":
        return potentials.lennard_jones_potential(system, p.sigma, p.epsilon, shift=p.shift,
                                                  switch_onset=p.switch_onset, **common)
    if p.kind == "morse":
        return potentials.morse_potential(system, p.depth, p.alpha, p.r0, shift=p.shift,
                                          switch_onset=p.switch_onset, **common)
    if p.kind == "spc_fw":
        return potentials.spc_fw_potential(system, coulomb_alpha=p.coulomb_alpha, **common)
    if p.kind == "mpnn":
        if p.checkpoint is not None:  # pre-trained parameters (and architecture) from `dmd-dist pretrain`
            from dmd_dist.train.pretrain import pretrained_potential

            return pretrained_potential(system, p)
        return potentials.mpnn_potential(system, p.preset, seed=p.init_seed, **common)
    raise InputError("potential.kind", f"unknown kind {p.kind!r}")


def build(cfg):
    """(system, potential, params, key): the prepared (relaxed, equilibrated) start of every replica."""
    set_precision(cfg.precision)
    key = jax.random.PRNGKey(cfg.seed)
    k_build, k_prep, key = jax.random.split(key, 3)
    system = build_system(cfg, k_build)
    potential, params = build_potential(cfg, system)
    if cfg.system.equilibration_steps:
        melt = 2.0 * cfg.sampling.temperature if (cfg.system.melt and cfg.system.kind != "file") else None
        system = systems.prepare(system, potential, params, cfg.sampling.temperature, k_prep,
                                 cfg.system.equilibration_steps, cfg.sampling.dt, cfg.system.friction, melt)
    return system, potential, params, key
