"""Vibrational spectra: density of states from the VACF, and IR absorption from the dipole derivative.

The IR pipeline follows the paper's (docs/method.md §6): forward-difference dM/dt, mean-subtracted;
autocorrelation over all time origins, summed over x, y, z; multiplied by a Gaussian window
exp(-t^2 / (2 sigma^2)) (sigma = 1/3 ps gives exp(-4.5 t^2)); the two-sided Fourier transform of that
even function, 2 int_0^inf C(t) cos(omega t) dt, on a zero-padded grid; prefactor beta / (6 c eps0 V),
giving n(omega) alpha(omega) in cm^-1 (classical, no quantum correction; it obeys the f-sum rule,
tests/test_spectra.py).  Frequencies are wavenumbers in cm^-1.
"""

import jax.numpy as jnp
import numpy as np

from dmd_dist.observables.tcf import autocorrelation

SPEED_OF_LIGHT_CM_PER_PS = 2.99792458e-2  # c in cm/ps
EPSILON0 = 8.8541878128e-12  # F/m
ELEMENTARY_CHARGE = 1.602176634e-19  # C
BOLTZMANN_SI = 1.380649e-23  # J/K


def grid_size(n_samples):
    """Length of the zero-padded transform grid for a correlation of `n_samples`: the paper's 8000 points
    (8.34 cm^-1 apart at dt = 0.5 fs), or twice the samples if more (no circular overlap)."""
    return max(8000, 2 * n_samples)


def reported_band(grid):
    """Which wavenumbers of a transform grid are reported: up to the Nyquist limit and 4000 cm^-1."""
    return grid <= min(grid[len(grid) // 2], 4000.0)


def wavenumber_grid(dt, n_grid):
    """Wavenumbers (cm^-1) of a cosine transform of n_grid samples spaced dt (ps)."""
    return jnp.arange(n_grid) / (n_grid * dt * SPEED_OF_LIGHT_CM_PER_PS)


def cosine_transform(c, dt, n_grid):
    """F(nu) = int_0^inf c(t) cos(2 pi c nu t) dt on the grid `wavenumber_grid(dt, n_grid)`.

    Trapezoid weights (the first sample counts half) and zero padding to n_grid samples; evaluated as the
    real part of an FFT, which is exact for the trapezoid sum.
    """
    n = c.shape[0]
    if n > n_grid:
        raise ValueError(f"correlation of {n} samples does not fit a grid of {n_grid}")
    w = c.at[0].multiply(0.5)
    return jnp.real(jnp.fft.fft(w, n=n_grid)) * dt


def gaussian_window(times, sigma):
    return jnp.exp(-0.5 * (times / sigma) ** 2)


def dipole_derivative_acf(dipoles, dt):
    """<dM/dt(0) . dM/dt(t)> over all origins, summed over x, y, z; dipoles (T, 3) in e nm."""
    mdot = (dipoles[1:] - dipoles[:-1]) / dt
    mdot = mdot - jnp.mean(mdot, axis=0)
    return jnp.sum(autocorrelation(mdot), axis=-1)


def ir_prefactor(temperature, volume):
    """beta / (6 c eps0 V) in SI, times the conversion of int <Mdot Mdot> dt from e^2 nm^2/ps to
    C^2 m^2/s, and 1/m -> 1/cm: multiply the cosine transform (internal units) to get cm^-1."""
    beta = 1.0 / (BOLTZMANN_SI * temperature)  # 1/J
    c_si = 2.99792458e8
    acf_integral = (ELEMENTARY_CHARGE * 1e-9) ** 2 / 1e-12  # (e nm / ps)^2 * ps -> C^2 m^2 / s
    return beta / (6.0 * c_si * EPSILON0 * volume * 1e-27) * acf_integral * 1e-2


def ir_spectrum(acf, dt, temperature, volume, window_sigma=1.0 / 3.0, n_grid=8000):
    """n(omega) alpha(omega) (cm^-1) on `wavenumber_grid(dt, n_grid)` from a dipole-derivative ACF: the
    prefactor times the two-sided transform int_-inf^inf C(t) e^{-i omega t} dt = 2 x the cosine transform
    (C is even).  (Before this was written down, the one-sided transform gave half the physical value.)"""
    times = jnp.arange(acf.shape[0]) * dt
    two_sided = 2.0 * cosine_transform(acf * gaussian_window(times, window_sigma), dt, n_grid)
    return ir_prefactor(temperature, volume) * two_sided


def vibrational_dos(vacf_values, dt, n_grid=8000, window_sigma=None):
    """Vibrational density of states normalised to unit area over wavenumber (cm), from <v(0).v(t)>."""
    c = vacf_values / vacf_values[0]
    if window_sigma is not None:
        c = c * gaussian_window(jnp.arange(c.shape[0]) * dt, window_sigma)
    f = cosine_transform(c, dt, n_grid)
    dnu = 1.0 / (n_grid * dt * SPEED_OF_LIGHT_CM_PER_PS)
    return f / (jnp.sum(f[: n_grid // 2]) * dnu)


__all__ = ["grid_size", "reported_band", "wavenumber_grid", "cosine_transform", "gaussian_window", "dipole_derivative_acf", "ir_prefactor",
           "ir_spectrum", "vibrational_dos"]


# Where liquid water's IR bands lie (cm^-1): hindered rotation, H-O-H bend, O-H stretch.
WATER_BANDS = {"libration": (300.0, 1100.0), "bend": (1100.0, 2200.0), "stretch": (2500.0, 4000.0)}


def band_peak(x, y, lo, hi):
    """Position of the highest point of a spectrum y(x) within (lo, hi), refined between grid points by the
    parabola through the maximum and its neighbours (so it moves smoothly with the spectrum, not in grid
    steps)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    inside = np.flatnonzero((x > lo) & (x < hi))
    if inside.size < 3:
        raise ValueError(f"fewer than 3 grid points in ({lo}, {hi})")
    i = inside[np.argmax(y[inside])]
    if i in (inside[0], inside[-1]):  # at the region's edge: no interior maximum to refine
        return float(x[i])
    y0, y1, y2 = y[i - 1], y[i], y[i + 1]
    curvature = y0 - 2.0 * y1 + y2
    shift = 0.5 * (y0 - y2) / curvature if curvature < 0 else 0.0
    return float(x[i] + shift * (x[i + 1] - x[i]))
