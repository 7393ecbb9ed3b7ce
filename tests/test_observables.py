"""Observables on synthetic signals with known answers."""

import jax.numpy as jnp
import numpy as np

from dmd_dist.observables import spectra, tcf, transport


def test_fft_correlation_equals_the_all_origins_sum():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 3)), rng.standard_normal((50, 3))
    c = np.asarray(tcf.correlation(jnp.asarray(a), jnp.asarray(b), max_lag=20))
    brute = np.array([[np.mean(a[: 50 - k, j] * b[k:, j]) for j in range(3)] for k in range(20)])
    np.testing.assert_allclose(c, brute, atol=1e-12)


def ornstein_uhlenbeck(n_steps, n_atoms, dt, gamma, kt_over_m, seed=0):
    """Exact OU discretisation: v' = v e^{-gamma dt} + sqrt(kT/m (1 - e^{-2 gamma dt})) xi."""
    rng = np.random.default_rng(seed)
    c = np.exp(-gamma * dt)
    s = np.sqrt(kt_over_m * (1 - c * c))
    v = np.empty((n_steps, n_atoms, 3))
    v[0] = rng.standard_normal((n_atoms, 3)) * np.sqrt(kt_over_m)
    for t in range(1, n_steps):
        v[t] = c * v[t - 1] + s * rng.standard_normal((n_atoms, 3))
    return v


def test_green_kubo_of_ornstein_uhlenbeck_velocities_gives_kt_over_m_gamma():
    dt, gamma, kt_over_m = 0.01, 2.0, 0.5  # D = kT/(m gamma) = 0.25
    v = jnp.asarray(ornstein_uhlenbeck(20000, 64, dt, gamma, kt_over_m))
    c = transport.vacf(v, max_lag=500)  # 5 ps = 10 relaxation times
    np.testing.assert_allclose(c[0], 3 * kt_over_m, rtol=0.02)
    # Independent estimates from 8 blocks give the statistical error of D.
    blocks = [float(transport.green_kubo_diffusion(transport.vacf(b, max_lag=500), dt)) for b in jnp.split(v, 8)]
    d, err = np.mean(blocks), np.std(blocks, ddof=1) / np.sqrt(8)
    assert abs(d - 0.25) < 4 * err + 0.002, (d, err)


def test_ballistic_free_particles_have_msd_v2_t2_and_einstein_slope():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((30, 3))
    times = np.arange(100) * 0.1
    x = rng.standard_normal((30, 3)) + times[:, None, None] * v[None]
    msd = np.asarray(transport.mean_squared_displacement(jnp.asarray(x)))
    np.testing.assert_allclose(msd, np.mean(np.sum(v * v, -1)) * times**2, rtol=1e-9, atol=1e-9)


def test_einstein_diffusion_of_a_random_walk():
    rng = np.random.default_rng(2)
    dt, d_true = 0.01, 0.3
    steps = rng.standard_normal((4000, 200, 3)) * np.sqrt(2 * d_true * dt)
    x = jnp.asarray(np.cumsum(steps, axis=0))
    msd = transport.mean_squared_displacement(x, max_lag=400)
    d = transport.einstein_diffusion(msd, jnp.arange(400) * dt, fit_from=0.5)
    np.testing.assert_allclose(d, d_true, rtol=0.03)


def test_ir_of_a_damped_cosine_peaks_at_its_frequency_with_the_expected_area():
    dt, n_grid = 0.0005, 8000
    nu0 = 1650.0  # cm^-1
    omega0 = 2 * np.pi * spectra.SPEED_OF_LIGHT_CM_PER_PS * nu0  # rad/ps
    t = np.arange(4000) * dt
    acf = jnp.asarray(2.5 * np.cos(omega0 * t) * np.exp(-t / 0.5))
    grid = np.asarray(spectra.wavenumber_grid(dt, n_grid))
    spec = np.asarray(spectra.ir_spectrum(acf, dt, 300.0, 30.0, window_sigma=1e9, n_grid=n_grid))
    dnu = grid[1]
    assert abs(grid[np.argmax(spec[: n_grid // 2])] - nu0) <= dnu
    np.testing.assert_allclose(dnu, 8.339, rtol=1e-3)  # the paper's grid at dt = 0.5 fs
    # int_0^inf F(nu) dnu = C(0) / (4 c): the area is fixed by the zero-lag value and the prefactor.
    area = np.sum(spec[: n_grid // 2]) * dnu
    expected = spectra.ir_prefactor(300.0, 30.0) * 2.5 / (4 * spectra.SPEED_OF_LIGHT_CM_PER_PS)
    np.testing.assert_allclose(area, expected, rtol=0.01)


def test_ir_pipeline_from_an_oscillating_dipole_stream():
    dt, nu0 = 0.0005, 3400.0
    omega0 = 2 * np.pi * spectra.SPEED_OF_LIGHT_CM_PER_PS * nu0
    t = np.arange(2000) * dt
    phases = np.array([0.3, 1.9, 4.0])
    m = jnp.asarray(0.02 * np.sin(omega0 * t[:, None] + phases[None]))
    acf = spectra.dipole_derivative_acf(m, dt)
    spec = np.asarray(spectra.ir_spectrum(acf, dt, 300.0, 30.0))
    grid = np.asarray(spectra.wavenumber_grid(dt, 8000))
    assert abs(grid[np.argmax(spec[:4000])] - nu0) <= grid[1]
    assert np.all(np.isfinite(spec))


def test_vibrational_dos_of_harmonic_oscillators():
    dt, nu0 = 0.001, 500.0
    omega0 = 2 * np.pi * spectra.SPEED_OF_LIGHT_CM_PER_PS * nu0
    t = np.arange(3000) * dt
    c = jnp.asarray(np.cos(omega0 * t))
    dos = np.asarray(spectra.vibrational_dos(c, dt, n_grid=8000, window_sigma=0.5))
    grid = np.asarray(spectra.wavenumber_grid(dt, 8000))
    assert abs(grid[np.argmax(dos[:4000])] - nu0) <= grid[1]
    np.testing.assert_allclose(np.sum(dos[:4000]) * grid[1], 1.0, rtol=1e-9)
