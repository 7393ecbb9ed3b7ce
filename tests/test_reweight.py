"""Ensemble reweighting with known answers: uniform weights and ESS = N at the sampling point, the
autodiff gradient of a reweighted mean equal to -beta Cov(dU/dtheta, c) (linear model and LJ), huge
energies without overflow, the resampling threshold, and global normalisation under vmap and shard_map
(4 simulated CPU devices) equal to the single-device result."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from dmd_dist.observables import reweight as rw
from dmd_dist.units import BOLTZMANN

BETA = 1.0 / (BOLTZMANN * 94.4)  # mol/kJ


def linear_model(n=64, p=3, seed=0):
    """Frames as features f(x_i) (kJ/mol per unit theta) and theta-independent observables c_i."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, p)) * 2.0
    c = np.sin(f[:, 0]) + 0.3 * f[:, 1] ** 2 + rng.standard_normal(n)
    return jnp.asarray(f), jnp.asarray(c), jnp.asarray(rng.standard_normal(p))


def numpy_cov_gradient(du, c, beta, log_w):
    w = np.exp(np.asarray(log_w, float))
    du, c = np.asarray(du, float), np.asarray(c, float)
    mdu, mc = w @ du, w @ c
    return -beta * (w @ ((du - mdu) * (c - mc)[:, None]))


def test_weights_are_uniform_and_ess_is_n_at_the_sampling_point():
    f, c, theta_s = linear_model(n=50)
    u = f @ theta_s
    lw = rw.log_weights(u, u, BETA)
    np.testing.assert_allclose(np.exp(lw), 1 / 50, rtol=1e-14)
    assert float(rw.effective_sample_size(lw)) == 50.0
    assert float(jnp.sum(jnp.exp(lw))) == pytest.approx(1.0, abs=1e-14)
    assert float(rw.weighted_mean(c, lw)) == pytest.approx(float(jnp.mean(c)), rel=1e-14)
    # A constant energy shift (another zero of energy, here a huge one) changes nothing.
    lw_shift = rw.log_weights(u + 1e5, u, BETA)
    assert float(rw.effective_sample_size(lw_shift)) == 50.0
    np.testing.assert_allclose(lw_shift, lw, atol=1e-12)


def test_invalid_frames_get_zero_weight_and_no_gradient():
    f, c, theta_s = linear_model(n=20)
    valid = jnp.arange(20) % 4 != 0  # 15 valid frames
    lw = rw.log_weights(f @ theta_s, f @ theta_s, BETA, valid=valid)
    np.testing.assert_allclose(np.exp(lw), np.where(valid, 1 / 15, 0.0), rtol=1e-14)
    assert float(rw.effective_sample_size(lw)) == 15.0

    def mean(theta):
        return rw.weighted_mean(c, rw.log_weights(f @ theta, f @ theta_s, BETA, valid=valid))

    expected = numpy_cov_gradient(np.asarray(f)[valid], np.asarray(c)[valid], BETA, np.log(np.full(15, 1 / 15)))
    np.testing.assert_allclose(jax.grad(mean)(theta_s), expected, rtol=1e-10)


def test_gradient_of_the_reweighted_mean_is_minus_beta_covariance_linear_model():
    f, c, theta_s = linear_model()
    u_sample = f @ theta_s

    def mean_c(theta):
        return rw.reweighted_average(c, f @ theta, u_sample, BETA)

    for theta in (theta_s, theta_s + jnp.array([0.05, -0.03, 0.02])):
        grad = np.asarray(jax.grad(mean_c)(theta))
        lw = rw.log_weights(f @ theta, u_sample, BETA)
        want = numpy_cov_gradient(f, c, BETA, lw)  # dU/dtheta = f
        np.testing.assert_allclose(grad, want, rtol=1e-10)
        np.testing.assert_allclose(rw.covariance_gradient(f, c, BETA, lw), want, rtol=1e-12)
    assert float(rw.effective_sample_size(lw)) < 64.0  # away from theta_s the weights are not uniform


def lj_frames(n_frames=40, seed=1):
    """Perturbed 2x2x2 simple cubic argon-like clusters in a periodic box (nm)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3) * 0.38
    return jnp.asarray(grid + rng.normal(0, 0.02, (n_frames, 8, 3))), 0.76


def lj_energy(sigma, epsilon, x, edge):
    d = x[:, None, :] - x[None, :, :]
    d = d - edge * jnp.round(d / edge)
    i, j = np.triu_indices(x.shape[0], 1)
    r2 = jnp.sum(d[i, j] ** 2, -1)
    sr6 = (sigma**2 / r2) ** 3
    return jnp.sum(4 * epsilon * (sr6**2 - sr6))


def test_gradient_of_the_reweighted_mean_is_minus_beta_covariance_lennard_jones():
    x, edge = lj_frames()
    energy = jax.vmap(lj_energy, (None, None, 0, None))
    theta_s = jnp.array([0.3405, 0.996])  # sigma (nm), epsilon (kJ/mol)
    u_sample = energy(*theta_s, x, edge)
    # A theta-independent observable per frame: the mean squared displacement from the lattice.
    c = jnp.mean(jnp.sum((x - x[0]) ** 2, -1), -1)

    # Analytic dU/dsigma and dU/depsilon per frame (pairs as in lj_energy).
    def analytic(sigma, epsilon, xf):
        d = xf[:, None, :] - xf[None, :, :]
        d = d - edge * np.round(d / edge)
        i, j = np.triu_indices(8, 1)
        r2 = np.sum(d[i, j] ** 2, -1)
        sr6 = (sigma**2 / r2) ** 3
        return [np.sum(4 * epsilon * (12 * sr6**2 - 6 * sr6) / sigma), np.sum(4 * (sr6**2 - sr6))]

    for theta in (theta_s, theta_s * jnp.array([1.01, 1.1])):
        grad = jax.grad(lambda t: rw.reweighted_average(c, energy(t[0], t[1], x, edge), u_sample, BETA))(theta)
        du = np.array([analytic(*np.asarray(theta), np.asarray(xf)) for xf in x])
        lw = rw.log_weights(energy(*theta, x, edge), u_sample, BETA)
        np.testing.assert_allclose(grad, numpy_cov_gradient(du, c, BETA, lw), rtol=1e-10)


def test_huge_energies_give_finite_weights_equal_to_a_log_sum_exp_reference():
    rng = np.random.default_rng(2)
    n = 200
    u_sample = 1e5 + rng.standard_normal(n) * 50.0  # kJ/mol: exp(-beta U) underflows to 0
    u_theta = u_sample + 3e3 * rng.standard_normal(n)  # beta dU ~ 4e3: exp overflows naively
    lw = rw.log_weights(jnp.asarray(u_theta), jnp.asarray(u_sample), BETA)
    a = -BETA * (u_theta - u_sample)
    np.testing.assert_allclose(lw, a - logsumexp(a), rtol=1e-12, atol=1e-9)
    ess = float(rw.effective_sample_size(lw))
    assert np.all(np.isfinite(np.asarray(lw))) and 1.0 <= ess < 1.0 + 1e-6  # one frame dominates
    assert bool(rw.needs_resampling(lw, 0.1))
    f = jnp.asarray(rng.standard_normal((n, 2))) * 1e3
    grad = jax.grad(lambda t: rw.reweighted_average(jnp.asarray(u_sample), jnp.asarray(u_theta) + f @ t,
                                                    jnp.asarray(u_sample), BETA))(jnp.zeros(2))
    # One frame holds all the weight (the next is exp(-thousands) = 0 in float64): the covariance, hence
    # the gradient -beta Cov(f, c), is exactly 0, not NaN (inf - inf) or an overflow.
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
    # Still at energies ~1e5 kJ/mol (exp(-beta U) underflows), but beta dU ~ 1: ~74 frames share the weight.
    # The gradient is -beta Cov_w(f, c) with log-sum-exp weights in numpy, and the central difference.
    u_near = jnp.asarray(u_sample + rng.standard_normal(n) / BETA)
    c = jnp.asarray(u_sample)  # a huge observable too: the centred covariance must not cancel

    def mean_near(t):
        return rw.reweighted_average(c, u_near + f @ t, jnp.asarray(u_sample), BETA)

    a_near = -BETA * (np.asarray(u_near) - u_sample)
    lw_near = a_near - logsumexp(a_near)
    assert 50 < 1 / np.sum(np.exp(2 * lw_near)) < 100
    want = numpy_cov_gradient(f, c, BETA, lw_near)  # [-5473.0, 15861.3]
    grad = np.asarray(jax.grad(mean_near)(jnp.zeros(2)))
    np.testing.assert_allclose(grad, want, rtol=1e-10)
    h = 1e-7  # beta |f| h ~ 1e-4: truncation ~1e-8, rounding 1e-16 * 1e5 / h ~ 1e-4 absolute
    fd = [(float(mean_near(h * e)) - float(mean_near(-h * e))) / (2 * h) for e in jnp.eye(2)]
    np.testing.assert_allclose(fd, want, rtol=1e-6)
    # Float32 too: huge energies in single precision still normalise without inf or NaN.
    lw32 = rw.log_weights(jnp.asarray(u_theta, jnp.float32), jnp.asarray(u_sample, jnp.float32), BETA)
    assert lw32.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(lw32)))
    assert float(jnp.sum(jnp.exp(lw32))) == pytest.approx(1.0, rel=1e-5)


def test_needs_resampling_at_the_threshold():
    """k equal weights and N - k zero weights have ESS = k exactly; N = 10, threshold 0.5."""
    for k, want in [(1, True), (4, True), (5, False), (10, False)]:
        lw = jnp.where(jnp.arange(10) < k, -jnp.log(k * 1.0), -jnp.inf)
        assert float(rw.effective_sample_size(lw)) == k
        assert bool(rw.needs_resampling(lw, 0.5)) is want
    assert bool(jax.jit(rw.needs_resampling)(jnp.full(10, -jnp.log(10.0)), 0.99)) is False


def test_npt_pv_term_and_curve_valued_observables():
    f, c, theta_s = linear_model(n=20)
    u, us = f @ (theta_s + 0.1), f @ theta_s
    pv = jnp.linspace(-2.0, 2.0, 20)  # (P_theta - P_s) V_i, kJ/mol
    np.testing.assert_allclose(rw.log_weights(u, us, BETA, pv=pv), rw.log_weights(u + pv, us, BETA), atol=1e-14)
    lw = rw.log_weights(u, us, BETA, pv=pv)
    curves = jnp.stack([c, 2 * c, c**2], axis=1)  # e.g. g(r) per frame
    want = [rw.weighted_mean(c, lw), 2 * rw.weighted_mean(c, lw), rw.weighted_mean(c**2, lw)]
    np.testing.assert_allclose(rw.weighted_mean(curves, lw), want, rtol=1e-14)
    with pytest.raises(ValueError, match="frame axes"):
        rw.weighted_mean(curves.T, lw)


def test_reweighting_can_be_switched_off_per_target():
    f, c, theta_s = linear_model(n=30)
    us = f @ theta_s

    def mean(theta, enabled):
        # c_theta depends on theta directly too, so both gradients have the <dc/dtheta> part.
        return rw.reweighted_average(c * theta[0], f @ theta, us, BETA, enabled=enabled)

    on, off = (jax.value_and_grad(mean)(theta_s, e) for e in (True, False))
    assert float(on[0]) == pytest.approx(float(off[0]), rel=1e-14)  # same value at the sampling point
    np.testing.assert_allclose(off[1], [float(jnp.mean(c)), 0.0, 0.0], rtol=1e-14)
    ensemble = rw.covariance_gradient(f, c * theta_s[0], BETA)
    np.testing.assert_allclose(on[1], off[1] + ensemble, rtol=1e-10)
    # Off the sampling point the disabled path is still the plain mean.
    theta = theta_s + 0.2
    assert float(mean(theta, False)) == pytest.approx(float(jnp.mean(c * theta[0])), rel=1e-14)


def test_named_axis_under_vmap_normalises_over_all_replicas():
    f, c, theta_s = linear_model(n=64)
    theta = theta_s + jnp.array([0.1, 0.0, -0.1])
    u, us = f @ theta, f @ theta_s

    def per_replica(u, us, c):
        lw = rw.log_weights(u, us, BETA, axis_name="r")
        return (lw, rw.effective_sample_size(lw, "r"), rw.weighted_mean(c, lw, "r"),
                rw.needs_resampling(lw, 0.9, "r"), rw.reweighted_average(c, u, us, BETA, False, axis_name="r"))

    lw4, ess4, mean4, resample4, plain4 = jax.vmap(per_replica, axis_name="r")(
        u.reshape(4, 16), us.reshape(4, 16), c.reshape(4, 16))
    lw = rw.log_weights(u, us, BETA)
    np.testing.assert_allclose(lw4.reshape(-1), lw, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ess4, float(rw.effective_sample_size(lw)), rtol=1e-13)
    np.testing.assert_allclose(mean4, float(rw.weighted_mean(c, lw)), rtol=1e-13)
    np.testing.assert_allclose(plain4, float(jnp.mean(c)), rtol=1e-13)
    assert np.all(np.asarray(resample4) == bool(rw.needs_resampling(lw, 0.9)))


def test_sharded_weights_ess_mean_and_gradient_equal_the_single_device_ones_on_4_devices():
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from dmd_dist.observables import reweight as rw
        assert len(jax.devices()) == 4
        rng = np.random.default_rng(0)
        beta = 1.0 / (0.008314462618 * 300.0)
        f = jnp.asarray(rng.standard_normal((32, 2)) * 3.0)
        c = jnp.asarray(rng.standard_normal((32, 5)))  # a curve per frame
        theta_s, theta = jnp.array([1.0, -0.5]), jnp.array([1.2, -0.4])
        mesh = Mesh(np.array(jax.devices()), ("replica",))

        def local(theta, f, c):
            u, us = 1e5 + f @ theta, 1e5 + f @ theta_s
            lw = rw.log_weights(u, us, beta, axis_name="replica")
            return (lw, rw.effective_sample_size(lw, "replica"), rw.weighted_mean(c, lw, "replica"),
                    rw.needs_resampling(lw, 0.5, "replica"))

        sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("replica"), P("replica")),
                                        out_specs=(P("replica"), P(), P(), P()), check_vma=True))
        shard = NamedSharding(mesh, P("replica"))
        fs, cs = jax.device_put(f, shard), jax.device_put(c, shard)
        lw, ess, mean, resample = sharded(theta, fs, cs)
        lw1 = rw.log_weights(1e5 + f @ theta, 1e5 + f @ theta_s, beta)
        def rel(a, b):
            return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        assert rel(lw, lw1) < 1e-12, rel(lw, lw1)
        assert rel(ess, rw.effective_sample_size(lw1)) < 1e-12
        assert rel(mean, rw.weighted_mean(c, lw1)) < 1e-12
        assert bool(resample) == bool(rw.needs_resampling(lw1, 0.5))

        def loss_sharded(theta, f, c):
            m = rw.reweighted_average(c, 1e5 + f @ theta, 1e5 + f @ theta_s, beta, axis_name="replica")
            return jnp.sum(m ** 2)
        grad = jax.jit(jax.grad(jax.shard_map(loss_sharded, mesh=mesh, in_specs=(P(), P("replica"), P("replica")),
                                              out_specs=P(), check_vma=True)))(theta, fs, cs)
        ref = jax.grad(lambda t: jnp.sum(rw.reweighted_average(c, 1e5 + f @ t, 1e5 + f @ theta_s, beta) ** 2))(theta)
        assert rel(grad, ref) < 1e-12, (grad, ref)
        print("OK", float(ess))
    """)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
