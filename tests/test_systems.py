import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist import systems
from dmd_dist.errors import InputError
from dmd_dist.potentials.water import SPC_FW
from dmd_dist.units import BOLTZMANN


def test_lj_fluid_is_a_melted_liquid_at_the_requested_state(argon):
    s, pot, params = argon
    assert s.n_atoms == 256
    np.testing.assert_allclose(s.density, 1.374, rtol=1e-12)
    p_com = jnp.sum(s.masses[:, None] * s.velocities, 0)
    assert float(jnp.max(jnp.abs(p_com))) < 1e-9
    t = float(jnp.sum(s.masses[:, None] * s.velocities**2) / (s.degrees_of_freedom * BOLTZMANN))
    assert 60 < t < 130  # one instantaneous sample of 94.4 K with 765 dof: sd ~ 5 K
    # Melted: the lattice order is gone (mean-square displacement from the grid >> vibration amplitude).
    grid = systems.lattice_fluid(256, 94.4, jax.random.PRNGKey(1), "Ar", density=1.374)
    d = s.positions - grid.positions
    d = d - s.box * jnp.round(d / s.box)
    assert float(jnp.mean(jnp.sum(d * d, -1))) > 0.05  # nm^2; a solid would stay ~ 0.001


def test_water_box_has_intact_molecules_with_model_geometry(water):
    s, _, _ = water
    top = s.topology
    assert s.n_atoms == 96 and top.n_molecules == 32 and len(top.bonds) == 64 and len(top.angles) == 32
    np.testing.assert_allclose(s.density, 1.0, rtol=1e-12)
    b = s.positions[top.bonds[:, 0]] - s.positions[top.bonds[:, 1]]
    r = np.linalg.norm(np.asarray(b), axis=-1)
    assert np.all(np.abs(r - SPC_FW["r_oh"]) < 0.015)  # thermal O-H vibration, ~0.003 nm
    assert np.all(top.species[top.angles[:, 1]] == 0)  # oxygens at the angle centres


def test_from_file_round_trip_with_topology_and_velocities(water, tmp_path):
    import ase
    import ase.io
    from ase import units as u

    s, _, _ = water
    top = s.topology
    atoms = ase.Atoms([top.species_names[i] for i in top.species], positions=np.asarray(s.positions) * 10,
                      cell=np.asarray(s.box) * 10, pbc=True)
    atoms.set_velocities(np.asarray(s.velocities) / 100 / u.fs)
    atoms.wrap()  # files usually hold wrapped atoms: molecules must be made whole again
    path = tmp_path / "water.extxyz"
    ase.io.write(path, atoms)
    r = systems.from_file(str(path))
    assert r.topology.species_names == ("O", "H")
    np.testing.assert_array_equal(r.topology.molecule, top.molecule)
    assert {tuple(sorted(b)) for b in r.topology.bonds.tolist()} == {tuple(sorted(b)) for b in top.bonds.tolist()}
    assert len(r.topology.angles) == 32
    np.testing.assert_allclose(r.velocities, s.velocities, atol=1e-6)  # extxyz stores 8 decimals
    d = r.positions - s.positions
    np.testing.assert_allclose(d - s.box * np.round(d / s.box), 0, atol=1e-8)
    bond = r.positions[r.topology.bonds[:, 0]] - r.positions[r.topology.bonds[:, 1]]
    assert float(jnp.max(jnp.linalg.norm(bond, axis=-1))) < 0.12  # whole molecules, not split by the box


def test_from_file_refuses_non_orthorhombic_cells_and_missing_files(tmp_path):
    import ase
    import ase.io

    path = tmp_path / "tri.extxyz"
    ase.io.write(path, ase.Atoms("Ar2", positions=[[0, 0, 0], [2, 2, 2]], cell=[[10, 0, 0], [3, 10, 0], [0, 0, 10]], pbc=True))
    with pytest.raises(InputError, match="orthorhombic"):
        systems.from_file(str(path))
    with pytest.raises(InputError, match="system.path"):
        systems.from_file(str(tmp_path / "missing.xyz"))
