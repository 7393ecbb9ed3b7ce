"""Flexible 3-site water with fixed charges (SPC/Fw parameters) on damped-shifted-force Coulomb.

SPC/Fw: Wu, Tepper & Voth, J. Chem. Phys. 124, 024503 (2006).  Harmonic O-H bonds and H-O-H angle,
O-O Lennard-Jones, charges O -0.82 e, H +0.41 e; intramolecular pairs interact only through the bonded
terms.  The paper used Ewald sums; here electrostatics are damped-shifted-force (Fennell & Gezelter 2006)
with a cutoff, hence "SPC/Fw-like".
"""

import math

from dmd_dist.units import ANGSTROM, KCAL

# Parameters in nm, kJ/mol, rad, e.
SPC_FW = dict(
    r_oh=1.012 * ANGSTROM,
    theta_hoh=math.radians(113.24),
    k_bond=1059.162 * KCAL / ANGSTROM**2,  # U = k/2 (r - r0)^2
    k_angle=75.90 * KCAL,  # U = k/2 (theta - theta0)^2
    sigma_o=3.165492 * ANGSTROM,
    epsilon_o=0.1554253 * KCAL,
    charge_o=-0.82,
    charge_h=0.41,
)


def water_geometry():
    """Equilibrium O, H, H coordinates (nm) of one molecule, O at the origin, in the xy plane."""
    r, half = SPC_FW["r_oh"], 0.5 * SPC_FW["theta_hoh"]
    return [(0.0, 0.0, 0.0), (r * math.sin(half), r * math.cos(half), 0.0), (-r * math.sin(half), r * math.cos(half), 0.0)]
