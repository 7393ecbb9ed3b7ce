"""Units used everywhere inside dmd-dist: nm, ps, amu, kJ/mol, K, elementary charge.

This is the OpenMM/GROMACS convention (and the paper's).  Convert only at the edges (I/O, reports).
"""

BOLTZMANN = 0.008314462618  # k_B in kJ/(mol K)
COULOMB = 138.935457644  # 1/(4 pi eps0) in kJ mol^-1 nm e^-2
AVOGADRO = 6.02214076e23

# Lengths, times and energies in internal units.
ANGSTROM = 0.1  # nm
FEMTOSECOND = 1e-3  # ps
KCAL = 4.184  # kJ
DEBYE = 0.020819434  # e nm (1 e Angstrom = 4.80320 D)

# Conversions from internal units to reporting units (multiply).
NM2_PER_PS_TO_M2_PER_S = 1e-6  # 1 nm^2/ps = 1e-6 m^2/s
NM2_PER_PS_TO_1E9_M2_PER_S = 1e3  # D in units of 1e-9 m^2/s
AMU_PER_NM3_TO_G_PER_CM3 = 1e21 / AVOGADRO  # mass density
KJ_PER_MOL_NM3_TO_BAR = 1e25 / AVOGADRO  # pressure: 1 kJ/mol/nm^3 = 16.6054 bar
KJ_PS_PER_MOL_NM3_TO_MPA_S = 1e21 / AVOGADRO  # viscosity: 1 kJ ps/(mol nm^3) = 1.66054e-3 mPa s


def kinetic_temperature(kinetic_energy, degrees_of_freedom):
    """Instantaneous temperature (K) from a kinetic energy in kJ/mol."""
    return 2.0 * kinetic_energy / (degrees_of_freedom * BOLTZMANN)
