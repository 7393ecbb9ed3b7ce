"""System builders: LJ fluid, water box, any structure file ASE can read.

`lattice_fluid` and `water_lattice` only place atoms; `prepare` relaxes overlaps and equilibrates with
whatever potential the run uses (so the start is equilibrated for the model that will be simulated).
`lj_fluid` and `water_box` are the one-call versions with their reference potentials.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist import integrators, space
from dmd_dist.driver import OverflowCounter, run_checked, scan_steps
from dmd_dist.errors import InputError
from dmd_dist.potentials.water import water_geometry
from dmd_dist.systems.system import System, make_system, maxwell_boltzmann
from dmd_dist.units import AMU_PER_NM3_TO_G_PER_CM3, ANGSTROM


def atomic_mass(symbol: str) -> float:
    from ase.data import atomic_masses, atomic_numbers

    if symbol not in atomic_numbers:
        raise InputError("system.element", f"unknown chemical element {symbol!r}")
    return float(atomic_masses[atomic_numbers[symbol]])


def box_edge(total_mass, density=None, box=None):
    """Cubic box edge (nm) from a mass density (g/cm^3) or an explicit edge."""
    if box is not None:
        return float(box)
    return (total_mass * AMU_PER_NM3_TO_G_PER_CM3 / density) ** (1.0 / 3.0)


def _grid(n_sites, edge, key):
    """n_sites points of a simple cubic grid filling the box, chosen at random if the grid is larger."""
    m = math.ceil(n_sites ** (1.0 / 3.0) - 1e-9)
    g = (np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) * (edge / m)
    pick = np.sort(np.asarray(jax.random.permutation(key, len(g))[:n_sites]))
    return g[pick]


def lattice_fluid(n_atoms, temperature, key, element="Ar", density=None, box=None):
    """Atoms of one element on a cubic grid (to be melted by `prepare`), Maxwell-Boltzmann velocities."""
    mass = atomic_mass(element)
    edge = box_edge(n_atoms * mass, density, box)
    k_pos, k_vel = jax.random.split(key)
    masses = jnp.full(n_atoms, mass)
    return make_system(_grid(n_atoms, edge, k_pos), masses, edge, np.zeros(n_atoms), (element,),
                       velocities=maxwell_boltzmann(k_vel, masses, temperature))


def water_lattice(n_molecules, temperature, key, density=None, box=None):
    """Randomly oriented water molecules (O, H, H) on a cubic grid of molecule centres."""
    m_o, m_h = atomic_mass("O"), atomic_mass("H")
    edge = box_edge(n_molecules * (m_o + 2 * m_h), density, box)
    k_pos, k_rot, k_vel = jax.random.split(key, 3)
    centres = _grid(n_molecules, edge, k_pos)
    geom = np.asarray(water_geometry())
    geom = geom - (m_o * geom[0] + m_h * (geom[1] + geom[2])) / (m_o + 2 * m_h)
    q = np.asarray(jax.random.normal(k_rot, (n_molecules, 4)))
    rot = _rotation_matrices(q / np.linalg.norm(q, axis=1, keepdims=True))
    pos = (centres[:, None, :] + np.einsum("mij,aj->mai", rot, geom)).reshape(-1, 3)
    species = np.tile([0, 1, 1], n_molecules)
    masses = jnp.asarray(np.where(species == 0, m_o, m_h))
    molecule = np.repeat(np.arange(n_molecules), 3)
    base = 3 * np.arange(n_molecules)[:, None]
    bonds = (base[:, :, None] + np.array([[0, 1], [0, 2]])[None]).reshape(-1, 2)
    angles = base + np.array([1, 0, 2])[None]
    return make_system(pos, masses, edge, species, ("O", "H"), molecule, bonds, angles,
                       velocities=maxwell_boltzmann(k_vel, masses, temperature))


def _rotation_matrices(q):
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def orthorhombic_box(atoms):
    """The box edges (nm) of an ASE Atoms' cell, or None unless it is periodic and orthorhombic (what a
    dmd-dist system needs)."""
    cell = np.asarray(atoms.cell[:])
    if not atoms.pbc.all() or np.any(np.abs(cell - np.diag(np.diag(cell))) > 1e-8) or np.any(np.diag(cell) <= 0):
        return None
    return np.diag(cell) * ANGSTROM


def from_file(path, temperature=None, key=None):
    """Read any structure file ASE reads (positions in Angstrom there, nm here).

    The cell must be orthorhombic.  Molecules, bonds and angles are inferred from covalent radii (ASE's
    natural cutoffs, +20%); velocities are taken from the file when present, else drawn at `temperature`.
    """
    import ase.io
    from ase import units as ase_units

    try:
        atoms = ase.io.read(path)
    except FileNotFoundError:
        raise InputError("system.path", f"no such file: {path}") from None
    except Exception as e:  # ASE raises many types for unreadable files
        raise InputError("system.path", f"cannot read {path}: {type(e).__name__}: {e}") from None
    box = orthorhombic_box(atoms)
    if box is None:
        raise InputError("system.path", f"{path}: needs a periodic orthorhombic cell, got cell "
                                        f"{atoms.cell[:].tolist()}")
    check_separations(atoms, path)
    symbols = atoms.get_chemical_symbols()
    names = tuple(dict.fromkeys(symbols))
    species = np.array([names.index(s) for s in symbols])
    molecule, bonds, angles = infer_topology(atoms)
    masses = jnp.asarray(atoms.get_masses())
    if atoms.has("momenta"):
        velocities = atoms.get_velocities() * ase_units.fs * 100.0  # A/fs -> nm/ps
    elif temperature is not None:
        velocities = maxwell_boltzmann(key, masses, temperature)
    else:
        velocities = None
    positions = space.whole_molecules(atoms.get_positions() * ANGSTROM, molecule, box)
    return make_system(positions, masses, box, species, names, molecule, bonds, angles, velocities)


# Closer than this (nm), two atoms of a structure file overlap: no bond is this short (O-H is 0.096 nm), and
# the pair force would start the run with an explosion rather than an error.
MIN_SEPARATION = 0.05


def check_separations(atoms, path):
    """Refuse a structure with two atoms closer than MIN_SEPARATION (a duplicated atom, a bad unit)."""
    from ase.neighborlist import neighbor_list

    if len(atoms) < 2:
        return
    i, j, d = neighbor_list("ijd", atoms, MIN_SEPARATION / ANGSTROM)
    if len(i):
        k = int(np.argmin(d))
        raise InputError("system.path", f"{path}: atoms {i[k]} and {j[k]} are {d[k] * ANGSTROM:.4f} nm apart "
                                        f"(overlapping; closer than {MIN_SEPARATION} nm)")


def infer_topology(atoms):
    """(molecule, bonds, angles) from ASE natural cutoffs; isolated atoms are molecules of one."""
    from ase.neighborlist import natural_cutoffs, neighbor_list
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(atoms)
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.2))  # 20% over covalent radii
    keep = i < j
    bonds = np.stack([i[keep], j[keep]], 1)
    _, molecule = connected_components(coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n, n)),
                                       directed=False)
    partners = [[] for _ in range(n)]
    for a, b in bonds:
        partners[a].append(b)
        partners[b].append(a)
    angles = [(p[x], c, p[y]) for c, p in enumerate(partners) for x in range(len(p)) for y in range(x + 1, len(p))]
    return molecule, bonds, np.asarray(angles, np.int32).reshape(-1, 3)


def minimize(system: System, potential, params, steps=500, max_displacement=0.01):
    """Steepest descent with each atom's step capped at `max_displacement` (nm): removes overlaps."""
    nbrs = potential.neighbors.allocate(system.positions)
    counter = OverflowCounter()

    def chunk(p, state):
        def body(s, _):
            f = potential.forces(p, s.position, s.neighbors)
            fmax = jnp.max(jnp.linalg.norm(f, axis=-1))
            x = s.position + f * (max_displacement / jnp.maximum(fmax, 1e-12))
            return dataclasses.replace(s, position=x, neighbors=potential.neighbors.update(s.neighbors, x)), None
        return jax.lax.scan(body, state, None, length=steps)

    state = integrators.MDState(system.positions, system.velocities, jnp.zeros_like(system.positions), nbrs)
    descend = jax.jit(chunk)  # the parameters an argument, not constants of the program (docs/architecture.md)
    state, _ = run_checked(lambda s: descend(params, s), state, potential.neighbors, counter)
    return dataclasses.replace(system, positions=state.position)


def equilibrate(system: System, potential, params, temperature, key, steps, dt, friction=1.0, chunk_steps=1000):
    """Langevin NVT for `steps` steps from `system`; returns the system at the end."""
    dyn = integrators.Dynamics(potential, system.masses)
    lang = integrators.langevin_baoab(dyn, dt, temperature, friction)
    nbrs = potential.neighbors.allocate(system.positions)
    state = jax.jit(lang.init)(params, system.positions, system.velocities, nbrs, key)  # one program, not op by op
    counter = OverflowCounter()
    run = jax.jit(lambda p, s, n: scan_steps(lang.step, p, s, n), static_argnums=2)
    done = 0
    while done < steps:
        n = min(chunk_steps, steps - done)
        state, _ = run_checked(lambda s: run(params, s, n), state, potential.neighbors, counter)
        done += n
    return dataclasses.replace(system, positions=state.position, velocities=state.velocity)


def prepare(system, potential, params, temperature, key, steps, dt, friction=1.0, melt_temperature=None):
    """Relax overlaps, optionally melt at `melt_temperature` for half the steps, equilibrate at T."""
    system = minimize(system, potential, params)
    k_melt, k_eq = jax.random.split(key)
    if melt_temperature is not None:
        system = equilibrate(system, potential, params, melt_temperature, k_melt, steps // 2, dt, friction)
    return equilibrate(system, potential, params, temperature, k_eq, steps, dt, friction)
