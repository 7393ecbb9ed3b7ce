"""Statistics of replica/segment ensembles: every reported number comes with a standard error."""

import numpy as np


def mean_stderr(samples):
    """Mean and standard error of the mean of independent samples (blocks, replicas, segments).

    With one sample the standard error is undefined and reported as NaN, not as zero.
    """
    x = np.asarray(samples, float).ravel()
    if x.size < 2:
        return float(x.mean()), float("nan")
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size))


def linear_slope(t, y):
    """Least-squares slope of y(t) along the last axis (vectorised over leading axes)."""
    t = np.asarray(t, float)
    y = np.asarray(y, float)
    tc = t - t.mean()
    return np.sum(tc * (y - y.mean(axis=-1, keepdims=True)), axis=-1) / np.sum(tc * tc)
