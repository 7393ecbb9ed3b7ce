"""Gradients through NVE segments: reverse-time adjoint vs direct backprop vs checkpointing vs finite
differences, in float64 and float32, for LJ argon and flexible water, under vmap and shard_map."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist import integrators, potentials, systems
from dmd_dist.adjoint import CheckpointAdjoint, DirectAdjoint, ReverseTimeAdjoint, Segment, run_segment

TAU_ARGON = 2.156  # ps: sigma sqrt(m/epsilon) for argon (0.3405 nm, 39.948 amu, 0.996 kJ/mol)


@pytest.fixture(scope="module")
def small_argon():
    """108-atom liquid argon (dense pair path: the direct-backprop reference must fit in memory)."""
    key = jax.random.PRNGKey(5)
    s = systems.lattice_fluid(108, 94.4, key, density=1.374)
    pot, params = potentials.lennard_jones_potential(s, 0.3405, 0.996, cutoff=0.8, neighbor_mode="dense")
    s = systems.prepare(s, pot, params, 94.4, key, 2000, 0.004, 1.0, melt_temperature=190.0)
    return s, pot, params


def vacf_record(state, params, v0):
    """Per-atom v(0).v(t): the Green-Kubo integrand."""
    return jnp.sum(state.velocity * v0, axis=-1)


def gk_loss(seg, adjoint):
    """A Green-Kubo-like loss of the VACF plus a term on the final state (so dL/dstate sees both)."""

    def loss(params, x0, v0, probe):
        res = run_segment(adjoint, seg, params, x0, v0, seg.dyn.potential.neighbors.allocate(x0), v0, probe)
        vacf = jnp.mean(res.records, axis=-1)
        return jnp.sum(vacf) * seg.dt * seg.record_every + 0.01 * jnp.sum(res.velocity[:5] ** 2)

    return loss


def gradients(loss, params, x0, v0):
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(params, x0, v0, jnp.zeros((), x0.dtype))


def max_rel(a, b):
    return max(float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_reverse_time_equals_direct_backprop_over_one_tau_in_float64(small_argon):
    s, pot, params = small_argon
    dt = 0.004
    seg = Segment(integrators.Dynamics(pot, s.masses), dt, 540, 5, vacf_record)  # 2.16 ps ~ 1 tau
    direct = gradients(gk_loss(seg, DirectAdjoint()), params, s.positions, s.velocities)
    reverse = gradients(gk_loss(seg, ReverseTimeAdjoint()), params, s.positions, s.velocities)
    checkpoint = gradients(gk_loss(seg, CheckpointAdjoint(every=60)), params, s.positions, s.velocities)
    assert max_rel(reverse[:3], direct[:3]) < 1e-8  # dL/dtheta, dL/dx0, dL/dv0
    assert max_rel(checkpoint[:3], direct[:3]) < 1e-12
    assert 0 < float(reverse[3]) < 1e-9  # reconstruction error, nm
    assert float(direct[3]) == 0.0


def test_float32_reverse_time_within_1e3_over_a_quarter_tau(small_argon):
    s, _, _ = small_argon
    f32 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)  # noqa: E731
    s32 = systems.make_system(f32(s.positions), f32(s.masses), f32(s.box), s.topology.species,
                              s.topology.species_names, velocities=f32(s.velocities))
    pot, params = potentials.lennard_jones_potential(s32, 0.3405, 0.996, cutoff=0.8, neighbor_mode="dense")
    params = f32(params)
    seg = Segment(integrators.Dynamics(pot, s32.masses), 0.004, 135, 5, vacf_record)  # 0.54 ps
    direct = gradients(gk_loss(seg, DirectAdjoint()), params, s32.positions, s32.velocities)
    reverse = gradients(gk_loss(seg, ReverseTimeAdjoint()), params, s32.positions, s32.velocities)
    assert reverse[0]["lj"]["sigma"].dtype == jnp.float32
    assert max_rel(reverse[0], direct[0]) < 1e-3
    assert float(reverse[3]) < 1e-4


def position_dependent_dipole(x, v, params, box):
    """M = sum_i q_i(x_i) x_i with charges that depend on position: nonlinear in the state, so an
    observable VJP taken one step off the recorded state would be O(dt) wrong."""
    q = 1.0 + 0.5 * jnp.sin(2 * jnp.pi * x[:, 0] / box[0]) * jnp.cos(2 * jnp.pi * x[:, 1] / box[1])
    q = q - jnp.mean(q)
    return jnp.sum(q[:, None] * x, axis=0) + 0.01 * jnp.sum(v, axis=0) ** 3


def one_step_off(record, dt):
    """The published pitfall, emulated: the record's value at x_n, but its VJP taken at x_n + dt v_n
    (the next step's positions) instead of at the recorded state."""

    @jax.custom_vjp
    def f(x, v, p, c):
        return record(x, v, p, c)

    def fwd(x, v, p, c):
        return record(x, v, p, c), (x + dt * v, v, p, c)

    def bwd(res, g):
        return jax.vjp(record, *res)[1](g)

    f.defvjp(fwd, bwd)
    return f


def test_reverse_time_matches_finite_differences_for_a_nonlinear_observable(small_argon):
    s, _, _ = small_argon
    # Switched LJ: continuous forces, so the trajectory is differentiable and FD sees no cutoff jumps.
    pot, params = potentials.lennard_jones_potential(s, 0.3405, 0.996, cutoff=0.8, switch_onset=0.7,
                                                     neighbor_mode="dense")
    dyn = integrators.Dynamics(pot, s.masses, remove_com=False)
    dipole = lambda x, v, p, c: position_dependent_dipole(x, v, p, s.box)  # noqa: E731
    on_state = lambda record: lambda st, p, c: record(st.position, st.velocity, p, c)  # noqa: E731

    def make_loss(record):
        seg = Segment(dyn, 0.004, 100, 2, on_state(record))

        def loss(params, x0, v0, probe):
            res = run_segment(ReverseTimeAdjoint(), seg, params, x0, v0, pot.neighbors.allocate(x0), None, probe)
            m = res.records
            return jnp.sum(jnp.mean(m[1:] * m[:-1], axis=0))

        return loss

    loss = make_loss(dipole)
    g = gradients(loss, params, s.positions, s.velocities)
    g_off = gradients(make_loss(one_step_off(dipole, 0.004)), params, s.positions, s.velocities)
    value = jax.jit(loss)
    for name in ("epsilon", "sigma"):
        h = 1e-6 * float(params["lj"][name][0])
        up = jax.tree.map(lambda a: a, params)
        dn = jax.tree.map(lambda a: a, params)
        up["lj"][name] = params["lj"][name] + h
        dn["lj"][name] = params["lj"][name] - h
        fd = (value(up, s.positions, s.velocities, 0.0) - value(dn, s.positions, s.velocities, 0.0)) / (2 * h)
        np.testing.assert_allclose(g[0]["lj"][name][0], fd, rtol=1e-6)
    # Initial-state gradient along a random direction: the exact adjoint agrees with FD, the
    # one-step-off variant is off by O(dt) (here ~1e-3 relative).
    d = jax.random.normal(jax.random.PRNGKey(0), s.positions.shape) * 1e-6
    fd = (value(params, s.positions + d, s.velocities, 0.0) - value(params, s.positions - d, s.velocities, 0.0)) / 2
    err = abs(float(jnp.sum(g[1] * d)) - float(fd)) / abs(float(fd))
    err_off = abs(float(jnp.sum(g_off[1] * d)) - float(fd)) / abs(float(fd))
    print(f"nonlinear observable: rel err vs FD exact {err:.2e}, one-step-off {err_off:.2e}")
    assert err < 1e-6, err
    assert err_off > 1e-4 and err_off > 100 * err, (err, err_off)


def test_flexible_water_with_bonds_angles_and_coulomb(water):
    s, pot, params = water
    dyn = integrators.Dynamics(pot, s.masses, wrap="molecules", box=s.box, molecule=jnp.asarray(s.topology.molecule),
                               n_molecules=s.topology.n_molecules)
    charges = jnp.where(jnp.asarray(s.topology.species) == 0, -0.82, 0.41)
    seg = Segment(dyn, 0.0005, 200, 1, lambda st, p, c: jnp.sum(charges[:, None] * st.velocity, axis=0))  # dM/dt

    def loss(adjoint):
        def f(params, x0, v0, probe):
            res = run_segment(adjoint, seg, params, x0, v0, pot.neighbors.allocate(x0), None, probe)
            j = res.records
            return jnp.sum(jnp.sum(j[0] * j, axis=-1))

        return f

    direct = gradients(loss(DirectAdjoint()), params, s.positions, s.velocities)
    reverse = gradients(loss(ReverseTimeAdjoint()), params, s.positions, s.velocities)
    assert set(reverse[0]) == {"lj", "coulomb", "bond", "angle"}
    assert max_rel(reverse[:3], direct[:3]) < 1e-8
    assert float(reverse[3]) < 1e-10


def test_vmap_over_replicas_gives_each_replicas_gradient(small_argon):
    s, pot, params = small_argon
    seg = Segment(integrators.Dynamics(pot, s.masses), 0.004, 60, 5, vacf_record)
    loss = gk_loss(seg, ReverseTimeAdjoint())
    v2 = jnp.stack([s.velocities, 1.1 * s.velocities])
    x2 = jnp.stack([s.positions, s.positions])
    batched = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 3)), (None, 0, 0, None)))(params, x2, v2, 0.0)
    for r in range(2):
        single = jax.grad(loss, argnums=(0, 3))(params, x2[r], v2[r], 0.0)
        assert max_rel(jax.tree.map(lambda a: a[r], batched[0]), single[0]) < 1e-12
        assert float(batched[1][r]) == pytest.approx(float(single[1]), abs=1e-15)


def test_gradient_sum_semantics_inside_shard_map_on_4_devices():
    """grad of a replicated parameter inside shard_map (check_vma) is already the sum over the replica
    axis; the loss averages by psum / count, and the result equals the single-device vmapped gradient."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        from jax.sharding import Mesh, PartitionSpec as P, NamedSharding
        from dmd_dist import integrators, potentials, systems
        from dmd_dist.adjoint import ReverseTimeAdjoint, Segment, run_segment
        assert len(jax.devices()) == 4
        key = jax.random.PRNGKey(0)
        s = systems.lattice_fluid(32, 94.4, key, density=1.374)
        pot, params = potentials.lennard_jones_potential(s, 0.3405, 0.996, cutoff=0.5, neighbor_mode="dense")
        s = systems.prepare(s, pot, params, 94.4, key, 300, 0.004, 1.0)
        seg = Segment(integrators.Dynamics(pot, s.masses), 0.004, 40, 4, lambda st, p, c: jnp.sum(st.velocity * c, -1))
        R = 8
        v0 = jnp.stack([s.velocities * (1 + 0.05 * r) for r in range(R)])
        x0 = jnp.broadcast_to(s.positions, (R,) + s.positions.shape)
        def replica_loss(params, x, v):
            res = run_segment(ReverseTimeAdjoint(), seg, params, x, v, pot.neighbors.allocate(x), v)
            return jnp.sum(jnp.mean(res.records, -1))
        mesh = Mesh(np.array(jax.devices()), ("replica",))
        def sharded_total(params, x, v):
            part = jnp.sum(jax.vmap(replica_loss, (None, 0, 0))(params, x, v))
            return jax.lax.psum(part, "replica") / R
        f = jax.shard_map(sharded_total, mesh=mesh, in_specs=(P(), P("replica"), P("replica")), out_specs=P(),
                          check_vma=True)
        shard = NamedSharding(mesh, P("replica"))
        x0s, v0s = jax.device_put(x0, shard), jax.device_put(v0, shard)
        g = jax.jit(jax.grad(f))(params, x0s, v0s)
        ref = jax.grad(lambda p: jnp.mean(jax.vmap(replica_loss, (None, 0, 0))(p, x0, v0)))(params)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
            rel = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
            assert rel < 1e-12, rel
        print("OK", jax.tree.leaves(g))
    """)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_bidirectional_window_equals_one_long_trajectory_and_differentiates(small_argon):
    from dmd_dist.driver import scan_steps
    from dmd_dist.segments import run_window

    s, pot, params = small_argon
    dyn = integrators.Dynamics(pot, s.masses)
    seg = Segment(dyn, 0.004, 60, 5, lambda st, p, c: st.velocity[:4])
    nbrs = pot.neighbors.allocate(s.positions)
    win = jax.jit(lambda p: run_window(ReverseTimeAdjoint(), seg, p, s.positions, s.velocities, nbrs,
                                       bidirectional=True))(params)
    assert win.records.shape[0] == 25
    np.testing.assert_allclose(np.asarray(win.times)[[0, 12, 24]], [-0.24, 0.0, 0.24], atol=1e-12)
    # The same window as one forward run: integrate back 60 steps from the frame, then forward 120.
    vv = integrators.velocity_verlet(dyn, 0.004)
    frame = vv.init(params, s.positions, s.velocities, nbrs)
    past, _ = jax.jit(lambda st: scan_steps(vv.reverse, params, st, 60))(frame)
    _, v = jax.jit(lambda st: scan_steps(vv.step, params, st, 120, lambda x: x.velocity[:4], 5))(past)
    np.testing.assert_allclose(win.records[1:], v, atol=1e-10)
    np.testing.assert_allclose(win.records[0], past.velocity[:4], atol=1e-10)

    def loss(adjoint):
        def f(p):
            w = run_window(adjoint, seg, p, s.positions, s.velocities, nbrs, bidirectional=True)
            return jnp.sum(w.records[0] * w.records)
        return jax.jit(jax.grad(f))

    np.testing.assert_allclose(loss(ReverseTimeAdjoint())(params)["lj"]["sigma"],
                               loss(DirectAdjoint())(params)["lj"]["sigma"], rtol=1e-9)


def test_default_checkpoint_grouping_divides_the_segment():
    from dmd_dist.segments import default_checkpoint_every

    assert default_checkpoint_every(2000, 2) % 2 == 0 and 1000 % (default_checkpoint_every(2000, 2) // 2) == 0
    assert abs(default_checkpoint_every(2000, 2) - 45) < 10
    assert default_checkpoint_every(7, 7) == 7


def test_a_windows_energy_error_is_its_integration_error_and_a_blown_up_window_strays_by_orders(small_argon):
    """`segments.energy_error`, the blow-up test of `segments.max_energy_error`: a bidirectional window of
    argon at its 4 fs time step keeps E = U + K to 2e-3 kJ/mol per atom (the leap-frog's fluctuation);
    with the frame's velocities 30 times larger (85 000 K) the same time step fails: atoms collide, the
    energy goes by many orders of magnitude more than 1 kJ/mol per atom (10 times larger velocities only
    stray by 0.17), and the error equals the larger of the two halves' |E(end) - E(frame)| / N by hand."""
    from dmd_dist.segments import energy_error, run_window

    s, pot, params = small_argon
    dyn = integrators.Dynamics(pot, s.masses)
    seg = Segment(dyn, 0.004, 60, 5, lambda st, p, c: st.velocity[:4])
    nbrs = pot.neighbors.allocate(s.positions)

    def error(v0):
        w = run_window(DirectAdjoint(), seg, params, s.positions, v0, nbrs, bidirectional=True)
        return w, energy_error(pot, s.masses, params, s.positions, v0, nbrs, w)

    _, good = jax.jit(error)(s.velocities)
    w, bad = jax.jit(error)(30.0 * s.velocities)
    assert good < 1e-2 and bad > 1e3, (good, bad)

    def total(x, v, n):
        return float(pot.energy(params, x, n) + 0.5 * jnp.sum(s.masses[:, None] * v * v))

    e0 = total(s.positions, 30.0 * s.velocities, nbrs)
    by_hand = max(abs(total(w.position, w.velocity, w.neighbors) - e0),
                  abs(total(w.position_backward, w.velocity_backward, w.neighbors_backward) - e0)) / s.n_atoms
    assert float(bad) == pytest.approx(by_hand, rel=1e-9)
