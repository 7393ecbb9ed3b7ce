"""Observables: time-correlation functions, transport coefficients, spectra, static structure,
reweighting, statistics."""

from dmd_dist.observables.reweight import (covariance_gradient, effective_sample_size, log_weights, needs_resampling,
                                           reweighted_average, weighted_mean)
from dmd_dist.observables.spectra import (WATER_BANDS, band_peak, dipole_derivative_acf, ir_spectrum, vibrational_dos,
                                          wavenumber_grid)
from dmd_dist.observables.static import (coordination_number, density, number_density, radial_distribution,
                                         radial_distribution_smooth)
from dmd_dist.observables.stats import jackknife, linear_slope, mean_stderr
from dmd_dist.observables.tcf import autocorrelation, correlation
from dmd_dist.observables.transport import (einstein_diffusion, green_kubo_diffusion, green_kubo_viscosity,
                                            mean_squared_displacement, pressure_tensor, shear_stress_acf,
                                            trapezoid, vacf)

__all__ = ["mean_stderr", "jackknife", "linear_slope", "autocorrelation", "correlation", "vacf", "green_kubo_diffusion",
           "mean_squared_displacement", "einstein_diffusion", "pressure_tensor", "shear_stress_acf",
           "green_kubo_viscosity", "trapezoid", "dipole_derivative_acf", "ir_spectrum", "vibrational_dos",
           "wavenumber_grid", "band_peak", "WATER_BANDS", "log_weights", "weighted_mean", "effective_sample_size", "needs_resampling",
           "reweighted_average", "covariance_gradient", "density", "number_density", "radial_distribution",
           "radial_distribution_smooth", "coordination_number"]
