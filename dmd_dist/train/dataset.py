"""Reference data for pre-training: frames of one set of atoms in one box, with energies and forces.

Files are extended XYZ (any ASE-readable format) in Angstrom, eV and eV/Angstrom, the convention of ASE
and of most DFT tools; inside, everything is nm and kJ/mol.  `write_dataset` writes every float exactly
(`repr`), so a written dataset reads back bit for bit: teacher data are trained on exactly what the file
holds, and the file can be reused as `pretrain.data`.
"""

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
from ase import units as ase_units

from dmd_dist.errors import InputError
from dmd_dist.systems import make_system
from dmd_dist.systems.builders import atomic_mass
from dmd_dist.units import ANGSTROM

EV = ase_units.eV / (ase_units.kJ / ase_units.mol)  # kJ/mol per eV (96.485...)
EV_PER_ANGSTROM = EV / ANGSTROM  # kJ/mol/nm per eV/Angstrom (964.85...)


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


def dataset_system(ds: Dataset):
    """A System for the dataset's atoms and box (the student potential is built for it)."""
    names = tuple(dict.fromkeys(ds.symbols))
    species = np.array([names.index(s) for s in ds.symbols])
    masses = np.array([atomic_mass(s) for s in ds.symbols])
    return make_system(ds.positions[0], masses, ds.box, species, names)


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_tag(path):
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
