import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist import integrators, potentials, systems
from dmd_dist.adjoint import ReverseTimeAdjoint, Segment, run_segment
from dmd_dist.driver import OverflowCounter
from dmd_dist.records import frame_context, recorder
from dmd_dist.window import gradient_growth, parameter_directions, suggest_window


def test_suggested_window_is_the_snr_maximum_of_a_synthetic_growth():
    """Signal T, replica spread a e^{lambda T}: SNR ~ T e^{-lambda T} peaks at T = 1/lambda."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal(64)
    z = (z - z.mean()) / z.std(ddof=1)  # exactly zero mean, unit spread
    times = np.linspace(0.01, 3.0, 300)
    lam, a = 2.0, 0.05
    g = (times[None, :] + z[:, None] * a * np.exp(lam * times)[None, :] * np.sqrt(64))[:, None, :]
    scan = suggest_window(times, g)
    assert abs(scan.suggested - 1 / lam) <= times[1] - times[0]
    np.testing.assert_allclose(scan.signal, times, rtol=1e-12)
    np.testing.assert_allclose(scan.stderr, a * np.exp(lam * times), rtol=1e-12)


def test_forward_mode_growth_equals_reverse_time_gradient_of_the_window_integral():
    key = jax.random.PRNGKey(3)
    s = systems.lattice_fluid(32, 94.4, key, density=1.374)
    pot, params = potentials.lennard_jones_potential(s, 0.3405, 0.996, cutoff=0.55, neighbor_mode="dense")
    s = systems.prepare(s, pot, params, 94.4, key, 500, 0.004, 1.0)
    seg = Segment(integrators.Dynamics(pot, s.masses), 0.004, 100, 5, recorder(("vacf",), s, pot))
    x = jnp.stack([s.positions, s.positions])
    v = jnp.stack([s.velocities, 0.9 * s.velocities])
    dirs = parameter_directions(params)
    assert len(dirs) == 2
    frames = integrators.MDState(x, v, None, pot.neighbors.allocate(x))
    times, g = gradient_growth(seg, params, frames, dirs, OverflowCounter(), 1.25)
    assert g.shape == (2, 2, 20) and np.isclose(times[-1], 0.4)

    def d_window(p, x, v):
        c = run_segment(ReverseTimeAdjoint(), seg, p, x, v, pot.neighbors.allocate(x),
                        frame_context(("vacf",), x, v)).records["vacf"]
        return (jnp.sum(c) - 0.5 * (c[0] + c[-1])) * 0.02 / 3.0

    for r in range(2):
        grad = jax.grad(d_window)(params, x[r], v[r])
        along = [sum(float(jnp.sum(a * b)) for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(d))) for d in dirs]
        np.testing.assert_allclose(g[r, :, -1], along, rtol=1e-9)
