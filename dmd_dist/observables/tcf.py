"""Time-correlation functions by FFT over all time origins (differentiable, any leading shape).

C_ab(tau) = 1/(T - tau) sum_{t=0}^{T-1-tau} a(t) b(t + tau): the unbiased estimator, every time origin
of the stream used once.  Streams have time on axis 0; trailing axes are kept (components, atoms), so the
caller decides what to sum (e.g. x, y, z) and what to average (atoms, replicas).
"""

import jax.numpy as jnp
import numpy as np


def _fft_size(n):
    """Next power of two >= 2n: zero padding that removes the circular wrap-around."""
    return 1 << int(np.ceil(np.log2(2 * n)))


def correlation(a, b=None, max_lag=None):
    """Cross-correlation <a(t) b(t+tau)> over all origins, tau = 0..max_lag-1 (default: all lags)."""
    b = a if b is None else b
    n = a.shape[0]
    max_lag = n if max_lag is None else int(max_lag)
    size = _fft_size(n)
    fa = jnp.fft.rfft(a, n=size, axis=0)
    fb = jnp.fft.rfft(b, n=size, axis=0)
    c = jnp.fft.irfft(jnp.conj(fa) * fb, n=size, axis=0)[:max_lag]
    counts = (n - jnp.arange(max_lag)).reshape((-1,) + (1,) * (a.ndim - 1))
    return c / counts


def autocorrelation(a, max_lag=None):
    return correlation(a, None, max_lag)

