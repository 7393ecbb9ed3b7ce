"""Time reversibility, energy conservation, thermostat temperature, and vmap over replicas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist import integrators, potentials
from dmd_dist.driver import scan_steps
from dmd_dist.observables import mean_stderr
from dmd_dist.units import BOLTZMANN


def nve(system, potential, kind="leapfrog", dt=0.001, **kw):
    dyn = integrators.Dynamics(potential, system.masses, box=system.box, molecule=jnp.asarray(system.topology.molecule),
                               n_molecules=system.topology.n_molecules, **kw)
    return getattr(integrators, kind)(dyn, dt)


def start(system, potential, params, integ):
    return integ.init(params, system.positions, system.velocities, potential.neighbors.allocate(system.positions))


def run(integ, params, state, n, record=None, every=1, reverse=False):
    step = integ.reverse if reverse else integ.step
    return jax.jit(lambda s: scan_steps(step, params, s, n, record, every))(state)


@pytest.mark.parametrize("kind", ["leapfrog", "velocity_verlet"])
def test_float64_round_trip_of_half_a_picosecond_of_liquid_argon(argon, kind):
    s, pot, params = argon
    integ = nve(s, pot, kind, dt=0.001)
    s0 = start(s, pot, params, integ)
    s1, _ = run(integ, params, s0, 500)
    assert int(s1.neighbors.rebuilds) > 0  # the round trip crosses neighbour-list rebuilds
    back, _ = run(integ, params, s1, 500, reverse=True)
    assert float(jnp.max(jnp.abs(back.position - s0.position))) < 1e-10
    assert float(jnp.max(jnp.abs(back.velocity - s0.velocity))) < 1e-8
    assert float(jnp.max(jnp.abs(s1.position - s0.position))) > 0.05  # it did go somewhere


def test_round_trip_with_molecule_wrapping(water):
    s, pot, params = water
    integ = nve(s, pot, "leapfrog", dt=0.0005, wrap="molecules")
    s0 = start(s, pot, params, integ)
    s1, _ = run(integ, params, s0, 200)
    back, _ = run(integ, params, s1, 200, reverse=True)
    d = back.position - s0.position
    d = d - s.box * jnp.round(d / s.box)  # wrapping may store a molecule one box vector away
    assert float(jnp.max(jnp.abs(d))) < 1e-10


def test_leapfrog_and_velocity_verlet_trace_the_same_positions(argon):
    s, pot, params = argon
    lf, vv = nve(s, pot, "leapfrog"), nve(s, pot, "velocity_verlet")
    a, _ = run(lf, params, start(s, pot, params, lf), 200)
    b, _ = run(vv, params, start(s, pot, params, vv), 200)
    np.testing.assert_allclose(a.position, b.position, atol=1e-11)
    np.testing.assert_allclose(lf.velocity(a), b.velocity, atol=1e-8)


def energy_series(system, potential, params, integ, steps, every):
    def record(x):
        v = integ.velocity(x)
        return potential.energy(params, x.position, x.neighbors) + integrators.kinetic_energy(v, system.masses)

    s0 = start(system, potential, params, integ)
    _, e = run(integ, params, s0, steps, record, every)
    return np.asarray(e) / system.n_atoms


def test_lennard_jones_energy_conservation(argon):
    s, _, _ = argon
    pot, params = potentials.lennard_jones_potential(s, 0.3405, 0.996, cutoff=1.0, shift=True, neighbor_mode="list")
    integ = nve(s, pot, "leapfrog", dt=0.002)
    e = energy_series(s, pot, params, integ, 2500, 10)  # 5 ps
    kt = BOLTZMANN * 94.4
    # Shifted LJ at dt = 2 fs: fluctuations ~1e-4 kT per atom, no systematic drift.
    assert np.std(e) < 1e-3 * kt
    slope = np.polyfit(np.arange(len(e)) * 0.02, e, 1)[0]
    assert abs(slope) < 1e-4 * kt  # per atom per ps


def test_flexible_water_energy_conservation(water):
    s, pot, params = water
    integ = nve(s, pot, "velocity_verlet", dt=0.0005)
    e = energy_series(s, pot, params, integ, 2000, 10)  # 1 ps
    kt = BOLTZMANN * 300.0
    assert np.std(e) < 0.02 * kt
    slope = np.polyfit(np.arange(len(e)) * 0.005, e, 1)[0]
    assert abs(slope) < 0.02 * kt


def test_langevin_mean_temperature_within_statistical_error(argon):
    s, pot, params = argon
    target = 120.0  # not the preparation temperature: the thermostat must pull it there
    dyn = integrators.Dynamics(pot, s.masses)
    lang = integrators.langevin_baoab(dyn, 0.002, target, friction=5.0)
    state = lang.init(params, s.positions, s.velocities, pot.neighbors.allocate(s.positions), jax.random.PRNGKey(7))
    dof = s.degrees_of_freedom

    def temp(x):
        return 2 * integrators.kinetic_energy(x.velocity, s.masses) / (dof * BOLTZMANN)

    state, _ = jax.jit(lambda x: scan_steps(lang.step, params, x, 1000))(state)  # 2 ps to relax
    _, t = jax.jit(lambda x: scan_steps(lang.step, params, x, 20000, temp, 1))(state)
    blocks = np.asarray(t).reshape(40, -1).mean(1)  # 40 blocks of 1 ps >> velocity decorrelation (0.2 ps)
    mean, err = mean_stderr(blocks)
    assert abs(mean - target) < 4 * err + 0.5, (mean, err)
    # Expected spread of the instantaneous temperature: T sqrt(2/dof).
    np.testing.assert_allclose(np.std(np.asarray(t)), target * np.sqrt(2 / dof), rtol=0.15)


def test_steps_vmap_over_replicas(argon):
    s, pot, params = argon
    integ = nve(s, pot, "leapfrog")
    v2 = jnp.stack([s.velocities, -s.velocities])
    x2 = jnp.stack([s.positions, s.positions])
    nb = pot.neighbors.allocate(x2)
    states = jax.vmap(integ.init, (None, 0, 0, 0))(params, x2, v2, nb)
    batched, _ = jax.jit(jax.vmap(lambda st: scan_steps(integ.step, params, st, 100)))(states)
    for r in range(2):
        single = integ.init(params, x2[r], v2[r], pot.neighbors.allocate(x2[r]))
        single, _ = run(integ, params, single, 100)
        np.testing.assert_allclose(batched.position[r], single.position, atol=1e-12)
