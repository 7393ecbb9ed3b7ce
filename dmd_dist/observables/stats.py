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


def jackknife(samples, statistic):
    """statistic(mean of samples) and its jackknife standard error, for a statistic of the mean of
    independent samples (axis 0) that is not itself a mean, such as the peak of an averaged spectrum."""
    x = np.asarray(samples, float)
    n = x.shape[0]
    value = float(statistic(x.mean(0)))
    if n < 2:
        return value, float("nan")
    total = x.sum(0)
    leave_one_out = np.array([statistic((total - x[i]) / (n - 1)) for i in range(n)])
    return value, float(np.sqrt((n - 1) / n * np.sum((leave_one_out - leave_one_out.mean()) ** 2)))


def linear_slope(t, y):
    """Least-squares slope of y(t) along the last axis (vectorised over leading axes)."""
    t = np.asarray(t, float)
    y = np.asarray(y, float)
    tc = t - t.mean()
    return np.sum(tc * (y - y.mean(axis=-1, keepdims=True)), axis=-1) / np.sum(tc * tc)
