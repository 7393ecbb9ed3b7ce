"""The IR pipeline (dmd_dist/observables/spectra.py) against formulas derived here, independently of the
module: a charged particle oscillating at a known frequency with the thermal amplitude, its dipole fed
through dipole_derivative_acf and ir_spectrum, checked for the ACF, the line position, width and shape,
the prefactor beta / (6 c eps0 V) in SI, and the integrated intensity (the classical f-sum rule); the grid
rule and resolution; the VDOS line shape.  Expected values use numpy and scipy.constants only.

Units: ps, nm, e.  1 cm^-1 is the wavenumber of light of frequency c * (1 cm^-1) = 2.99792458e10 Hz
= 0.0299792458 ps^-1, so a frequency f (ps^-1) is nu~ = f / 0.0299792458 cm^-1 and an angular frequency
omega (rad/ps) is nu~ = omega / (2 pi 0.0299792458) cm^-1.

Physics (module docstring, METHOD.md section 3, McQuarrie ch. 21 / Berens and Wilson 1981, classical
limit, SI): n(omega) alpha(omega) = beta / (6 c eps0 V) int_{-inf}^{inf} dt e^{-i omega t} C(t),
C(t) = <Mdot(0) . Mdot(t)>.  The t-integral is the *two-sided* Fourier transform, 2 int_0^inf C(t)
cos(omega t) dt for an even C; the reference code's Filon routine (Allen and Tildesley's FILONC) returns
exactly that 2 int_0^inf.  Wiener-Khinchin: int_{-inf}^{inf} d omega int dt e^{-i omega t} C(t)
= 2 pi C(0), so int_0^inf n alpha d omega = pi beta C(0) / (6 c eps0 V); for one charge q of mass m with
one degree of freedom, C(0) = q^2 <v^2> = q^2 kT / m and this is pi q^2 / (6 eps0 m c V): the classical
oscillator-strength (f-) sum rule int_0^inf n alpha d omega = pi N q^2 / (2 eps0 m c V) for N
isotropic oscillators (3 degrees of freedom each), independent of the temperature.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import constants as sc

from dmd_dist.observables import spectra

C_CM_PER_PS = sc.c * 100 * 1e-12  # 0.0299792458 cm/ps
DT = 0.0005  # ps, the paper's water time step
SIGMA_T = 1.0 / 3.0  # ps: the window exp(-t^2 / (2 sigma^2)) = exp(-4.5 t^2)
TEMPERATURE, VOLUME = 300.0, 30.0  # K, nm^3
MASS_AMU = 1.008  # a proton-like charge on a spring
F0 = 30.1  # ps^-1: nu~0 = 30.1 / 0.0299792458 = 1004.028 cm^-1 (between grid points, 120.4 spacings)
OMEGA0 = 2 * np.pi * F0  # rad/ps
NU0 = F0 / C_CM_PER_PS


def thermal_oscillator(n_samples=4001, axis=0):
    """M(t) = q x0 cos(omega0 t) along one axis, q = 1 e, with the equipartition amplitude of a particle of
    MASS_AMU at TEMPERATURE: <m v^2> = m x0^2 omega0^2 / 2 = kT, x0 = sqrt(2 kT / m) / omega0.
    Returns (dipoles (T, 3) in e nm, x0 in nm)."""
    kt = sc.k * TEMPERATURE  # J
    m = MASS_AMU * sc.atomic_mass  # kg
    x0 = math.sqrt(2 * kt / m) * 1e9 * 1e-12 / OMEGA0  # m/s -> nm/ps, over rad/ps: nm
    t = np.arange(n_samples) * DT
    dipoles = np.zeros((n_samples, 3))
    dipoles[:, axis] = x0 * np.cos(OMEGA0 * t)
    return dipoles, x0


def forward_difference_c0(x0):
    """C(0) of the forward difference (M(t + dt) - M(t)) / dt of q x0 cos(omega0 t): a sinusoid of amplitude
    B = q x0 2 sin(omega0 dt / 2) / dt (= q x0 omega0 s, s = sinc(omega0 dt / 2) = 0.99926 here), whose
    mean square over whole periods is B^2 / 2."""
    b = x0 * 2 * np.sin(OMEGA0 * DT / 2) / DT  # e nm / ps
    return b * b / 2


def prefactor_si():
    """beta / (6 c eps0 V) times the unit of int C dt, (e nm / ps)^2 ps = e^2 nm^2 / ps, in C^2 m^2 / s,
    giving 1/m, times 1e-2 m/cm: n alpha in cm^-1 per unit of the transform (e^2 nm^2 / ps)."""
    beta = 1 / (sc.k * TEMPERATURE)  # 1/J
    integral_unit = sc.e**2 * (1e-9) ** 2 / 1e-12  # C^2 m^2 / s
    return beta / (6 * sc.c * sc.epsilon_0 * VOLUME * 1e-27) * integral_unit * 1e-2


def spectrum_of(dipoles):
    n_grid = spectra.grid_size(dipoles.shape[0] - 1)
    acf = spectra.dipole_derivative_acf(jnp.asarray(dipoles), DT)
    # The default window: the expected values assume the paper's exp(-4.5 t^2), sigma = 1/3 ps.
    spec = np.asarray(spectra.ir_spectrum(acf, DT, TEMPERATURE, VOLUME, n_grid=n_grid))
    grid = np.asarray(spectra.wavenumber_grid(DT, n_grid))
    half = n_grid // 2  # 0 .. Nyquist
    return np.asarray(acf), grid[:half], spec[:half]


def test_dipole_derivative_acf_of_a_cosine_dipole_is_the_forward_difference_cosine():
    dipoles, x0 = thermal_oscillator()
    acf = np.asarray(spectra.dipole_derivative_acf(jnp.asarray(dipoles), DT))
    c0 = forward_difference_c0(x0)
    # C(tau) = (B^2 / 2) cos(omega0 tau) up to the all-origins estimator's residual
    # (1 / (n - tau)) sum cos(2 phi + omega0 tau) <~ 1 / ((n - tau) sin(omega0 dt)) ~ 1e-3 for tau <= 1 ps.
    tau = np.arange(2001) * DT
    np.testing.assert_allclose(acf[:2001], c0 * np.cos(OMEGA0 * tau), atol=3e-3 * c0)
    np.testing.assert_allclose(acf[0], c0, rtol=1e-3)
    # Equipartition (continuous derivative): C(0) = q^2 kT / m in (e nm/ps)^2; s^2 = 0.99852 apart.
    kt_over_m = sc.k * TEMPERATURE / (MASS_AMU * sc.atomic_mass) * 1e18 / 1e24  # m^2/s^2 -> nm^2/ps^2
    np.testing.assert_allclose(acf[0], kt_over_m, rtol=3e-3)


def test_the_line_sits_at_omega0_in_wavenumbers_with_the_width_of_the_gaussian_window():
    """The windowed ACF (B^2/2) cos(omega0 t) exp(-t^2 / 2 sigma^2) transforms to a Gaussian line in
    omega of standard deviation 1/sigma, i.e. in wavenumbers s = 1 / (2 pi c sigma) = 15.927 cm^-1
    (plus its mirror at -nu0, exp(-(2 omega0 sigma)^2 / 2) ~ 1e-700 here).  The ratio of peak to area
    of a Gaussian is 1 / (s sqrt(2 pi)) = c sigma sqrt(2 pi), whatever the normalisation."""
    dipoles, _ = thermal_oscillator()
    _, grid, spec = spectrum_of(dipoles)
    dnu = grid[1]
    np.testing.assert_allclose(NU0, 1004.02793, rtol=1e-7)  # 30.1 ps^-1 / 0.0299792458 ps^-1 per cm^-1
    assert abs(grid[np.argmax(spec)] - NU0) <= dnu / 2
    band = np.abs(grid - NU0) < 8 * 15.927
    weights = spec[band] / spec[band].sum()
    centroid = np.sum(weights * grid[band])
    width = np.sqrt(np.sum(weights * (grid[band] - centroid) ** 2))
    s_nu = 1 / (2 * np.pi * C_CM_PER_PS * SIGMA_T)
    np.testing.assert_allclose(s_nu, 15.927, rtol=1e-4)
    assert abs(centroid - NU0) < 0.05, centroid  # cm^-1, a 120th of the grid spacing
    np.testing.assert_allclose(width, s_nu, rtol=2e-3)
    # Peak height over area: the Gaussian value at the true peak, interpolated from the samples.
    area = np.sum(spec) * dnu
    peak = np.max(spec) / np.exp(-0.5 * ((grid[np.argmax(spec)] - NU0) / s_nu) ** 2)
    np.testing.assert_allclose(peak / area, C_CM_PER_PS * SIGMA_T * np.sqrt(2 * np.pi), rtol=2e-3)
    # Nothing outside the line: far from nu0 the spectrum is below 1e-4 of the peak (2e-5 here, from the
    # estimator's residual at large lags; an unwindowed 2 ps ACF would leak sinc side lobes of ~1e-2).
    assert np.max(np.abs(spec[np.abs(grid - NU0) > 12 * s_nu])) < 1e-4 * np.max(spec)


def test_ir_prefactor_is_beta_over_6_c_eps0_v_in_si():
    # ~ 1.8e7 cm^-1 per e^2 nm^2/ps at 300 K and 30 nm^3; CODATA 2018 and 2022 eps0 differ by 7e-10.
    np.testing.assert_allclose(spectra.ir_prefactor(TEMPERATURE, VOLUME), prefactor_si(), rtol=1e-8)
    # beta and 1/V: halving T or V doubles it.
    np.testing.assert_allclose(spectra.ir_prefactor(TEMPERATURE / 2, VOLUME),
                               2 * spectra.ir_prefactor(TEMPERATURE, VOLUME), rtol=1e-14)
    np.testing.assert_allclose(spectra.ir_prefactor(TEMPERATURE, VOLUME / 2),
                               2 * spectra.ir_prefactor(TEMPERATURE, VOLUME), rtol=1e-14)


def expected_line(grid, x0):
    """n alpha (cm^-1) of the cosine dipole from the two-sided transform, analytically:
    int_{-inf}^{inf} (B^2/2) cos(omega0 t) cos(Omega t) e^{-t^2 / 2 sigma^2} dt
      = (B^2/2) sigma sqrt(pi/2) [e^{-(Omega - omega0)^2 sigma^2 / 2} + e^{-(Omega + omega0)^2 sigma^2 / 2}],
    Omega = 2 pi c nu~."""
    omega = 2 * np.pi * C_CM_PER_PS * grid
    g = np.exp(-0.5 * ((omega - OMEGA0) * SIGMA_T) ** 2) + np.exp(-0.5 * ((omega + OMEGA0) * SIGMA_T) ** 2)
    return prefactor_si() * forward_difference_c0(x0) * SIGMA_T * np.sqrt(np.pi / 2) * g


def test_integrated_ir_intensity_obeys_the_f_sum_rule_and_the_line_has_the_physical_height():
    """int_0^inf n alpha d nu~ = (1 / (2 pi c)) int_0^inf n alpha d omega = q^2 / (12 eps0 m c^2 V) for one
    charge on a spring with one degree of freedom (module docstring above), times s^2 = (2 sin(omega0 dt/2)
    / (omega0 dt))^2 = 0.99852 for the forward-difference derivative.  With q = 1 e, m = 1.008 amu,
    V = 30 nm^3: 5.35e3 cm^-2 (independent of T)."""
    dipoles, x0 = thermal_oscillator()
    _, grid, spec = spectrum_of(dipoles)
    s2 = (2 * np.sin(OMEGA0 * DT / 2) / (OMEGA0 * DT)) ** 2
    m = MASS_AMU * sc.atomic_mass
    sum_rule = s2 * sc.e**2 / (12 * sc.epsilon_0 * m * sc.c**2 * VOLUME * 1e-27) * 1e-4  # m^-2 -> cm^-2
    area = np.sum(spec) * grid[1]  # the line is narrow and far from 0 and Nyquist: a Riemann sum is exact
    # One-sided vs two-sided (factor 2) or a lost 2 pi would be far outside 0.5 %.
    np.testing.assert_allclose(area, sum_rule, rtol=5e-3)
    np.testing.assert_allclose(spec, expected_line(grid, x0), rtol=0, atol=5e-3 * expected_line(NU0, x0))


def test_spectra_add_over_axes_and_do_not_depend_on_the_axis():
    """C is summed over x, y, z: the same oscillation along y gives the same spectrum, and one along x
    plus an independent one along z (another frequency) gives the sum of their spectra."""
    dx, _ = thermal_oscillator(axis=0)
    dy, _ = thermal_oscillator(axis=1)
    _, _, sx = spectrum_of(dx)
    _, _, sy = spectrum_of(dy)
    np.testing.assert_allclose(sy, sx, rtol=0, atol=1e-12 * sx.max())
    t = np.arange(dx.shape[0]) * DT
    dz = np.zeros_like(dx)
    dz[:, 2] = 0.004 * np.sin(2 * np.pi * 100.0 * t)  # 3335.6 cm^-1
    _, _, sz = spectrum_of(dz)
    _, _, sxz = spectrum_of(dx + dz)
    np.testing.assert_allclose(sxz, sx + sz, rtol=0, atol=1e-12 * sxz.max())


def test_grid_size_and_wavenumber_grid_give_the_documented_resolution():
    # The paper's 8000 points, or twice the samples when there are more (no circular overlap).
    assert [spectra.grid_size(n) for n in (1, 401, 4000, 4001, 10000)] == [8000, 8000, 8000, 8002, 20000]
    # Spacing 1 / (n_grid dt c): at dt = 0.5 fs, 1 / (8000 * 0.5e-15 s * 2.99792458e10 cm/s) = 8.33910 cm^-1.
    for dt, n_grid in ((0.0005, 8000), (0.002, 8000), (0.0005, 20000)):
        grid = np.asarray(spectra.wavenumber_grid(dt, n_grid))
        assert grid.shape == (n_grid,)
        np.testing.assert_allclose(grid, np.arange(n_grid) / (n_grid * dt * 1e-12 * sc.c * 100), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(spectra.wavenumber_grid(0.0005, 8000))[1], 8.339102, rtol=1e-6)
    # Nyquist (index n_grid / 2) = 1 / (2 dt c) = 33356.4 cm^-1 at 0.5 fs; reported up to min(Nyquist, 4000).
    grid = spectra.wavenumber_grid(0.0005, 8000)
    np.testing.assert_allclose(grid[4000], 1 / (2 * 0.0005e-12 * sc.c * 100), rtol=1e-13)
    keep = np.asarray(spectra.reported_band(grid))
    assert keep.sum() == 480 and np.asarray(grid)[keep].max() == pytest.approx(3994.43, abs=0.01)
    coarse = spectra.wavenumber_grid(0.005, 8000)  # Nyquist 3335.6 cm^-1 < 4000
    keep = np.asarray(spectra.reported_band(coarse))
    assert keep.sum() == 4001 and np.asarray(coarse)[keep].max() == pytest.approx(3335.64, abs=0.01)
    # A correlation longer than the grid is refused; grid_size always fits it.
    with pytest.raises(ValueError, match="does not fit"):
        spectra.cosine_transform(jnp.ones(8001), 0.0005, 8000)
    assert spectra.cosine_transform(jnp.ones(8001), 0.0005, spectra.grid_size(8001)).shape == (16002,)


def test_vibrational_dos_of_a_windowed_cosine_is_a_unit_area_gaussian_line():
    """VACF cos(omega0 t), window sigma = 0.5 ps: D(nu~) = exp(-(nu~ - nu0)^2 / 2 s^2) / (s sqrt(2 pi)),
    s = 1 / (2 pi c sigma) = 10.61 cm^-1, unit area over nu~ >= 0."""
    dt, nu0, sigma = 0.001, 503.7, 0.5
    t = np.arange(3000) * dt
    c = jnp.asarray(4.2 * np.cos(2 * np.pi * C_CM_PER_PS * nu0 * t))  # the amplitude drops out
    dos = np.asarray(spectra.vibrational_dos(c, dt, n_grid=8000, window_sigma=sigma))[:4000]
    grid = np.asarray(spectra.wavenumber_grid(dt, 8000))[:4000]
    s = 1 / (2 * np.pi * C_CM_PER_PS * sigma)
    want = np.exp(-0.5 * ((grid - nu0) / s) ** 2) / (s * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(dos, want, rtol=0, atol=2e-3 * want.max())


def test_band_peak_finds_a_line_between_grid_points_and_jackknife_gives_its_scatter():
    """A Gaussian line at 1637.3 cm^-1 on an 8.34 cm^-1 grid: the parabola through the top three points puts
    it within 0.5 cm^-1 (argmax alone is up to half a step off).  Noisy copies: the jackknife standard error
    of the mean spectrum's peak agrees with the peak's scatter over independent repeats."""
    from dmd_dist.observables.stats import jackknife

    x = np.arange(0, 4000, 8.34)

    def line(centre, width=40.0):
        return np.exp(-0.5 * ((x - centre) / width) ** 2)

    for centre in (1637.3, 1641.5, 3401.9):
        assert spectra.band_peak(x, line(centre) + 0.3 * line(centre + 1500), 1100, 2200 if centre < 2000 else 4000) \
            == pytest.approx(centre, abs=0.5)
    assert spectra.band_peak(x, line(1050.0), 1100, 2200) == pytest.approx(x[x > 1100][0])  # edge: no refinement
    rng = np.random.default_rng(0)
    noisy = lambda n: line(1637.3) + 0.05 * rng.standard_normal((n, x.size))  # noqa: E731
    peak = lambda y: spectra.band_peak(x, y, 1100, 2200)  # noqa: E731
    errors = [jackknife(noisy(16), peak)[1] for _ in range(20)]
    repeats = [peak(noisy(16).mean(0)) for _ in range(200)]
    assert np.mean(errors) == pytest.approx(np.std(repeats), rel=0.3), (np.mean(errors), np.std(repeats))
    # the jackknife of a mean is the usual standard error
    samples = rng.standard_normal(10)
    assert jackknife(samples, lambda m: m)[1] == pytest.approx(samples.std(ddof=1) / np.sqrt(10), rel=1e-12)
