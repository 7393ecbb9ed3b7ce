"""Transport coefficients: Green-Kubo and Einstein self-diffusion (nm^2/ps), Green-Kubo shear viscosity
(kJ ps mol^-1 nm^-3).

Report D in 1e-9 m^2/s with `units.NM2_PER_PS_TO_1E9_M2_PER_S` (1 nm^2/ps = 1000 x 1e-9 m^2/s) and the
viscosity in mPa s with `units.KJ_PS_PER_MOL_NM3_TO_MPA_S`.
"""

import jax.numpy as jnp

from dmd_dist.observables.tcf import autocorrelation
from dmd_dist.units import BOLTZMANN


def trapezoid(y, dx, axis=0):
    """Trapezoid rule along `axis` (differentiable)."""
    y = jnp.moveaxis(y, axis, 0)
    return (jnp.sum(y, axis=0) - 0.5 * (y[0] + y[-1])) * dx


def vacf(velocities, max_lag=None):
    """Velocity autocorrelation <v_i(0).v_i(t)>, summed over x, y, z and averaged over atoms and origins.

    velocities: (T, N, 3).  Returns (max_lag,).
    """
    return jnp.mean(jnp.sum(autocorrelation(velocities, max_lag), axis=-1), axis=-1)


def green_kubo_diffusion(vacf_values, dt):
    """D = (1/3) int_0^T <v(0).v(t)> dt by the trapezoid rule; vacf sampled every dt (ps)."""
    return trapezoid(vacf_values, dt) / 3.0


def mean_squared_displacement(positions, max_lag=None):
    """MSD(tau) over all origins from *unwrapped* positions (T, N, 3), averaged over atoms.

    Uses MSD(tau) = <x(t+tau)^2> + <x(t)^2> - 2 <x(t) x(t+tau)>, with the correlation by FFT.
    """
    n = positions.shape[0]
    max_lag = n if max_lag is None else int(max_lag)
    sq = jnp.sum(positions * positions, axis=-1)  # (T, N)
    cum = jnp.concatenate([jnp.zeros((1,) + sq.shape[1:], sq.dtype), jnp.cumsum(sq, axis=0)])
    lags = jnp.arange(max_lag)
    counts = (n - lags)[:, None]
    # sum_{t < n - tau} x(t)^2 and sum_{t >= tau} x(t)^2
    head = cum[n - lags]
    tail = cum[n] - cum[lags]
    cross = jnp.sum(autocorrelation(positions, max_lag), axis=-1) * counts
    return jnp.mean((head + tail - 2.0 * cross) / counts, axis=-1)


def einstein_diffusion(msd, times, fit_from, fit_to=None):
    """D = slope / 6 of a least-squares line through MSD(t) for fit_from <= t <= fit_to (ps)."""
    fit_to = times[-1] if fit_to is None else fit_to
    mask = (times >= fit_from) & (times <= fit_to)
    t = jnp.where(mask, times, 0.0)
    w = mask.astype(msd.dtype)
    n = jnp.sum(w)
    tm = jnp.sum(w * t) / n
    ym = jnp.sum(w * msd) / n
    slope = jnp.sum(w * (t - tm) * (msd - ym)) / jnp.sum(w * (t - tm) ** 2)
    return slope / 6.0


def pressure_tensor(virial, velocities, masses, volume):
    """P = (sum_i m_i v_i (x) v_i + W) / V in kJ/(mol nm^3), W from `Potential.virial`; any leading axes."""
    kinetic = jnp.einsum("...ia,...ib,i->...ab", velocities, velocities, masses)
    return (kinetic + virial) / volume


def shear_stress_acf(pressure, max_lag=None):
    """<P'(0) : P'(t)> / 10 with P' the symmetric traceless part of the pressure tensor (T, 3, 3).

    In an isotropic fluid this equals <P_xy(0) P_xy(t)> but averages all five independent shear
    components instead of one (Daivis and Evans, J. Chem. Phys. 100, 541 (1994)).
    """
    sym = 0.5 * (pressure + jnp.swapaxes(pressure, -1, -2))
    trace = jnp.trace(sym, axis1=-2, axis2=-1)[..., None, None] / 3.0
    traceless = sym - trace * jnp.eye(3, dtype=pressure.dtype)
    flat = traceless.reshape(traceless.shape[:-2] + (9,))
    return jnp.sum(autocorrelation(flat, max_lag), axis=-1) / 10.0


def green_kubo_viscosity(stress_acf, dt, volume, temperature):
    """eta = V / (k_B T) int_0^T <P_xy(0) P_xy(t)> dt by the trapezoid rule, in kJ ps/(mol nm^3)."""
    return volume / (BOLTZMANN * temperature) * trapezoid(stress_acf, dt)
