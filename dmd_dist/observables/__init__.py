"""Observables: time-correlation functions, transport coefficients, spectra, statistics."""

from dmd_dist.observables.spectra import dipole_derivative_acf, ir_spectrum, vibrational_dos, wavenumber_grid
from dmd_dist.observables.stats import linear_slope, mean_stderr
from dmd_dist.observables.tcf import autocorrelation, correlation
from dmd_dist.observables.transport import (einstein_diffusion, green_kubo_diffusion, green_kubo_viscosity,
                                            mean_squared_displacement, pressure_tensor, shear_stress_acf,
                                            trapezoid, vacf)

__all__ = ["mean_stderr", "linear_slope", "autocorrelation", "correlation", "vacf", "green_kubo_diffusion",
           "mean_squared_displacement", "einstein_diffusion", "pressure_tensor", "shear_stress_acf",
           "green_kubo_viscosity", "trapezoid", "dipole_derivative_acf", "ir_spectrum",
           "vibrational_dos", "wavenumber_grid"]
