"""Differentiable ensemble reweighting (Zwanzig / one-state MBAR), docs/method.md §4.

Frames x_i were sampled with parameters theta_s; the ensemble average at theta is estimated as

    <c>_theta = sum_i w_i(theta) c_i,   w_i proportional to exp(-beta [U_theta(x_i) - U_s(x_i)]),

normalised to sum 1.  Differentiating through w gives the ensemble term of the gradient: at theta =
theta_s, d<c>/dtheta = <dc/dtheta> - beta Cov(dU/dtheta, c) (`covariance_gradient` is that second term
written out, for checks).  Energies in kJ/mol, beta in mol/kJ (1 / (k_B T), `units.BOLTZMANN`).

Every function reduces over all axes of its local arrays; with `axis_name` the max and the sums are also
reduced over that named axis (`jax.lax.pmax` / `jax.lax.psum`), so inside `jax.shard_map` or
`jax.vmap(..., axis_name=...)` over replicas the weights are normalised over *all* frames on all
devices.  Without `axis_name` the functions are plain local reductions.

Log weights are computed with a log-sum-exp shifted by the (global) maximum, so energies of 1e5 kJ/mol
and reduced energy differences of thousands never overflow; the shift is held out of differentiation,
which is exact because the normalised weights do not depend on it.
"""

import jax
import jax.numpy as jnp


def _sum_axes(x, axes, axis_name):
    """Sum over local `axes` (None: all), then over the named axis if given."""
    s = jnp.sum(x, axis=axes)
    return s if axis_name is None else jax.lax.psum(s, axis_name)


def _sum(x, axis_name):
    return _sum_axes(x, None, axis_name)


def _max(x, axis_name):
    """Global max of x, without gradient (used only as a shift that cancels)."""
    m = jnp.max(jax.lax.stop_gradient(x))
    if axis_name is not None:
        m = jax.lax.pmax(m, axis_name)
    # All -inf (every weight zero) would give NaN from -inf - -inf; 0 keeps the NaN-free path.
    return jnp.where(jnp.isfinite(m), m, 0.0)


def logsumexp(x, axis_name=None):
    """log sum exp(x) over all local elements (and over `axis_name`), overflow-free."""
    m = _max(x, axis_name)
    return m + jnp.log(_sum(jnp.exp(x - m), axis_name))


def log_weights(u_theta, u_sample, beta, pv=None, axis_name=None, valid=None):
    """Normalised log weights log w_i, w_i = exp(-beta [dU_i + pv_i]) / sum_j exp(-beta [dU_j + pv_j]).

    u_theta: U_theta(x_i), the energies of the frames under the current parameters (kJ/mol, any shape).
    u_sample: U_s(x_i) under the parameters (and potential) that sampled them (kJ/mol, same shape).
    beta: 1 / (k_B T) in mol/kJ.
    pv: per-frame change of the PV term between the two ensembles, (P_theta - P_s) V_i in kJ/mol, for NPT
        frames reweighted to another pressure.  None when both share the pressure: the reduced energies
        beta (U + P V) then differ by beta dU only, PV cancels exactly.
    axis_name: normalise over this named axis as well (shard_map / vmap over replicas).
    valid: booleans shaped like u_theta; frames marked False get weight exactly 0 (e.g. a segment that
        went non-finite), the others are normalised among themselves.
    Returns log w with the shape of u_theta; sum(exp(log w)) = 1 over all frames on the axis.
    """
    delta = u_theta - u_sample
    if pv is not None:
        delta = delta + pv
    a = -beta * delta
    if valid is not None:
        a = jnp.where(valid, a, -jnp.inf)
    return a - logsumexp(a, axis_name)


def _broadcast_weights(log_w, values):
    """exp(log w) shaped to multiply values whose leading axes are the frame axes of log w."""
    values = jnp.asarray(values)
    if values.shape[: log_w.ndim] != log_w.shape:
        raise ValueError(f"values {values.shape} must start with the frame axes of the weights {log_w.shape}")
    return jnp.exp(log_w).reshape(log_w.shape + (1,) * (values.ndim - log_w.ndim)), values


def weighted_mean(values, log_w, axis_name=None):
    """sum_i w_i c_i with normalised log weights; values (frames..., *curve) -> (*curve).

    The frame axes of `values` are those of `log_w` (scalars per frame, or a curve per frame such as
    g(r) or a TCF).
    """
    w, values = _broadcast_weights(log_w, values)
    return _sum_axes(w * values, tuple(range(log_w.ndim)), axis_name)


def effective_sample_size(log_w, axis_name=None):
    """Kish effective sample size (sum w)^2 / sum w^2 (= 1 / sum w^2 for normalised weights).

    Computed from exp(log w - max), each term in [0, 1], so it neither overflows nor depends on the
    normalisation; uniform weights give exactly N (integers are exact in floating point).
    """
    m = _max(log_w, axis_name)
    e = jnp.exp(log_w - m)
    return _sum(e, axis_name) ** 2 / _sum(e * e, axis_name)


def needs_resampling(log_w, threshold_fraction, axis_name=None):
    """True (a boolean array, usable under jit) when ESS < threshold_fraction x N, N the frame count
    over all local axes and `axis_name`: the weights have degenerated and the frames should be resampled
    at the current parameters."""
    n = _sum(jnp.ones_like(log_w), axis_name)
    return effective_sample_size(log_w, axis_name) < threshold_fraction * n


def plain_mean(values, n_axes=1, axis_name=None):
    """Unweighted mean over the first `n_axes` (frame) axes of values, and over `axis_name`."""
    values = jnp.asarray(values)
    axes = tuple(range(n_axes))
    # The count is built from the data so that it varies over a shard_map axis exactly as the data do.
    return _sum_axes(values, axes, axis_name) / _sum_axes(jnp.ones_like(values), axes, axis_name)


def reweighted_average(values, u_theta, u_sample, beta, enabled=True, pv=None, axis_name=None):
    """Ensemble average of per-frame `values` at theta, with or without the reweighting term.

    enabled=True: sum_i w_i(theta) c_i (`log_weights`, `weighted_mean`); its gradient contains the
    ensemble term -beta Cov(dU/dtheta, c).  enabled=False (a Python bool, e.g. a target's `reweight`
    flag): the plain frame mean, whose gradient is only <dc/dtheta>; u_theta is not used.  At
    theta = theta_s both give the same value.  Shapes: values (frames..., *curve), energies (frames...).
    """
    u_theta = jnp.asarray(u_theta)
    if not enabled:
        return plain_mean(values, u_theta.ndim, axis_name)
    return weighted_mean(values, log_weights(u_theta, u_sample, beta, pv, axis_name), axis_name)


def covariance_gradient(du_dtheta, values, beta, log_w=None, axis_name=None):
    """The ensemble term of d<c>/dtheta written out: -beta (<dU/dtheta c> - <dU/dtheta><c>).

    du_dtheta: (frames..., P) derivatives of U_theta(x_i) in the P parameters; values: (frames...,)
    scalars c_i.  Averages are weighted by log_w (uniform if None: the sampling point).  Returns (P,).
    This is what autodiff through `reweighted_average` gives for c independent of theta; a reference
    for tests and a cheap estimate when the full graph is not wanted.
    """
    du_dtheta, values = jnp.asarray(du_dtheta), jnp.asarray(values)
    if log_w is None:
        log_w = jnp.zeros_like(values, du_dtheta.dtype)  # zeros_like: varies over the axis like values
        log_w = log_w - logsumexp(log_w, axis_name)
    mean_du = weighted_mean(du_dtheta, log_w, axis_name)
    mean_c = weighted_mean(values, log_w, axis_name)
    # Centred product: avoids the cancellation of <dU c> - <dU><c> when the means are large.
    cov = weighted_mean((du_dtheta - mean_du) * (values - mean_c)[..., None], log_w, axis_name)
    return -beta * cov
