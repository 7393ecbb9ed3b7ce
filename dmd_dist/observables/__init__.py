from dmd_dist.observables.stats import linear_slope, mean_stderr

__all__ = ["mean_stderr", "linear_slope"]
