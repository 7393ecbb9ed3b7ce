"""Classical force fields: pair terms (Lennard-Jones, Morse, damped-shifted-force Coulomb) on the
neighbour list, and bonded terms (harmonic bonds and angles) on a fixed topology.

Pair forces are computed explicitly from the full neighbour list, F_i = -sum_j phi'(r_ij) r_ij/|r_ij|:
a gather and a row sum, no scatter (the energy-gradient route scatters, and is slower on CPU).  Tests
check them against -dE/dx by autodiff and finite differences.  Per-species parameters are mixed with the
Lorentz-Berthelot rules; parameters are pytrees of arrays indexed by species (or bond/angle type).
"""

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.special import erfc

from dmd_dist.neighbors import NeighborListFns
from dmd_dist.potentials.base import Potential
from dmd_dist.space import safe_norm
from dmd_dist.units import COULOMB
from dmd_dist.varying import cotangent_like, varying_like


@dataclasses.dataclass(frozen=True)
class PairTerm:
    """phi(r) for one kind of pair interaction; `pair_energy(params, r, si, sj)` is elementwise.

    si, sj are species indices broadcastable to r, or None for a one-species system (then the
    per-species arrays are used at index 0, which avoids per-pair gathers).
    """

    name: str
    cutoff: float
    pair_energy: Callable
    default_params: dict
    shift: bool = False  # subtract phi(cutoff) so the energy is continuous at the cutoff
    self_energy: Callable | None = None  # constant (position-independent) part, e.g. DSF self term
    switch_onset: float | None = None  # multiply by a C2 switch from here to the cutoff (smooth forces)

    def shifted_energy(self, params, r, si, sj):
        e = self.pair_energy(params, r, si, sj)
        if self.shift:
            e = e - self.pair_energy(params, jnp.full_like(r, self.cutoff), si, sj)
        if self.switch_onset is not None:
            e = e * smooth_switch(r, self.switch_onset, self.cutoff)
        return e


def smooth_switch(r, onset, cutoff):
    """1 below `onset`, 0 at `cutoff`, C2 in between (1 - 10x^3 + 15x^4 - 6x^5).

    A plain cutoff makes forces jump where pairs cross it; trajectories then have derivatives that no
    autodiff sees (the jumps).  Switched potentials have continuous forces and their derivatives, so
    gradients through dynamics agree with finite differences of the ensemble.
    """
    x = jnp.clip((r - onset) / (cutoff - onset), 0.0, 1.0)
    return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)


def _per_pair(values, si, sj):
    if si is None:
        return values[0], values[0]
    return values[si], values[sj]


def geometric_mean(a, b):
    """sqrt(a b), with a zero gradient where a b = 0 (a species without a well, like SPC/Fw's H) instead of
    sqrt's infinite slope, which made every parameter gradient NaN."""
    ab = a * b
    positive = ab > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, ab, 1.0)), 0.0)


def lennard_jones(sigma, epsilon, cutoff, shift=False, switch_onset=None):
    """4 eps [(sigma/r)^12 - (sigma/r)^6]; sigma (nm) and epsilon (kJ/mol) per species."""

    def pair_energy(p, r, si, sj):
        s_i, s_j = _per_pair(p["sigma"], si, sj)
        e_i, e_j = _per_pair(p["epsilon"], si, sj)
        sigma_ij = 0.5 * (s_i + s_j)
        eps_ij = geometric_mean(e_i, e_j)
        x6 = (sigma_ij / r) ** 6
        return 4.0 * eps_ij * (x6 * x6 - x6)

    params = {"sigma": jnp.atleast_1d(jnp.asarray(sigma, float)), "epsilon": jnp.atleast_1d(jnp.asarray(epsilon, float))}
    return PairTerm("lj", cutoff, pair_energy, params, shift, switch_onset=switch_onset)


def morse(depth, alpha, r0, cutoff, shift=False, switch_onset=None):
    """D [exp(-2a(r-r0)) - 2 exp(-a(r-r0))]: minimum -D at r0, zero at infinity; per species."""

    def pair_energy(p, r, si, sj):
        d_i, d_j = _per_pair(p["depth"], si, sj)
        a_i, a_j = _per_pair(p["alpha"], si, sj)
        r_i, r_j = _per_pair(p["r0"], si, sj)
        x = jnp.exp(-0.5 * (a_i + a_j) * (r - 0.5 * (r_i + r_j)))
        return geometric_mean(d_i, d_j) * (x * x - 2.0 * x)

    params = {k: jnp.atleast_1d(jnp.asarray(v, float)) for k, v in (("depth", depth), ("alpha", alpha), ("r0", r0))}
    return PairTerm("morse", cutoff, pair_energy, params, shift, switch_onset=switch_onset)


def damped_shifted_force_coulomb(charge, cutoff, alpha=2.0):
    """Fennell & Gezelter (J. Chem. Phys. 124, 234104, 2006) damped shifted-force Coulomb.

    Energy and force both go to zero at the cutoff; `alpha` (1/nm) is the damping; charges (e) per
    species.  The constant self term makes the energy comparable with Ewald sums.
    """
    erfc_c = math.erfc(alpha * cutoff)
    force_shift = erfc_c / cutoff**2 + 2.0 * alpha / math.sqrt(math.pi) * math.exp(-((alpha * cutoff) ** 2)) / cutoff

    def pair_energy(p, r, si, sj):
        q_i, q_j = _per_pair(p["charge"], si, sj)
        return COULOMB * q_i * q_j * (erfc(alpha * r) / r - erfc_c / cutoff + force_shift * (r - cutoff))

    def self_energy(p, species):
        q = p["charge"][species]
        return -COULOMB * (0.5 * erfc_c / cutoff + alpha / math.sqrt(math.pi)) * jnp.sum(q * q)

    return PairTerm("coulomb", cutoff, pair_energy, {"charge": jnp.atleast_1d(jnp.asarray(charge, float))}, False, self_energy)


@dataclasses.dataclass(frozen=True)
class BondedTerm:
    """Energy of a fixed topology: `energy(params, positions, displacement)`."""

    name: str
    energy: Callable
    default_params: dict


def harmonic_bonds(bonds, k, r0, bond_type=None):
    """sum_b k/2 (|r_b| - r0)^2 over bonds (B, 2); k in kJ/mol/nm^2, r0 in nm, per bond type."""
    bonds = np.asarray(bonds, np.int32).reshape(-1, 2)
    types = np.zeros(len(bonds), np.int32) if bond_type is None else np.asarray(bond_type, np.int32)

    def energy(p, positions, displacement):
        d = displacement(positions[bonds[:, 0]], positions[bonds[:, 1]])
        r = safe_norm(d, jnp.ones(len(bonds), bool))
        return 0.5 * jnp.sum(p["k"][types] * (r - p["r0"][types]) ** 2)

    return BondedTerm("bond", energy, {"k": jnp.atleast_1d(jnp.asarray(k, float)), "r0": jnp.atleast_1d(jnp.asarray(r0, float))})


def harmonic_angles(angles, k, theta0, angle_type=None):
    """sum_a k/2 (theta_a - theta0)^2 over angles (A, 3) = (i, centre, j); k in kJ/mol/rad^2."""
    angles = np.asarray(angles, np.int32).reshape(-1, 3)
    types = np.zeros(len(angles), np.int32) if angle_type is None else np.asarray(angle_type, np.int32)

    def energy(p, positions, displacement):
        a = displacement(positions[angles[:, 0]], positions[angles[:, 1]])
        b = displacement(positions[angles[:, 2]], positions[angles[:, 1]])
        # atan2(|a x b|, a.b) is accurate at all angles, unlike arccos near 0 and pi.
        theta = jnp.arctan2(safe_norm(jnp.cross(a, b), jnp.ones(len(angles), bool)), jnp.sum(a * b, -1))
        return 0.5 * jnp.sum(p["k"][types] * (theta - p["theta0"][types]) ** 2)

    params = {"k": jnp.atleast_1d(jnp.asarray(k, float)), "theta0": jnp.atleast_1d(jnp.asarray(theta0, float))}
    return BondedTerm("angle", energy, params)


class ClassicalPotential(Potential):
    """Sum of pair terms on a neighbour list and bonded terms.

    `exclude_intramolecular`: pair terms skip pairs inside one molecule (the usual rule for rigid or
    flexible 3-site water, where intramolecular forces are the bonded terms).
    """

    def __init__(self, displacement, neighbors: NeighborListFns, species, pair_terms=(), bonded_terms=(),
                 molecule=None, exclude_intramolecular=False):
        self.displacement = displacement
        self.neighbors = neighbors
        self.species = np.asarray(species, np.int32)
        self.single_species = int(self.species.max(initial=0)) == 0
        self.molecule = None if molecule is None else np.asarray(molecule, np.int32)
        self.exclude_intramolecular = bool(exclude_intramolecular) and self.molecule is not None
        self.pair_terms = tuple(pair_terms)
        self.bonded_terms = tuple(bonded_terms)
        for term in self.pair_terms:
            if term.cutoff > neighbors.cutoff:
                raise ValueError(f"{term.name} cutoff {term.cutoff} exceeds the neighbour-list cutoff")
        names = [t.name for t in self.pair_terms + self.bonded_terms]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate term names {names}")

    def default_params(self):
        return {t.name: dict(t.default_params) for t in self.pair_terms + self.bonded_terms}

    def _pairs(self, positions, nbrs):
        """Per-pair displacement, distance, base mask and species of the (N, capacity) list."""
        n = positions.shape[0]
        idx = nbrs.idx
        mask = idx < n
        if self.exclude_intramolecular:
            mol = jnp.asarray(self.molecule)
            mask = mask & (mol[:, None] != mol[jnp.minimum(idx, n - 1)])
        d = self.displacement(positions[:, None, :], positions[jnp.minimum(idx, n - 1)])
        if self.single_species:
            si = sj = None
        else:
            sp = jnp.asarray(self.species)
            si, sj = sp[:, None], sp[jnp.minimum(idx, n - 1)]
        return d, mask, si, sj

    def _pair_phi(self, params, r, mask, si, sj):
        total = 0.0
        for term in self.pair_terms:
            inside = mask & (r < term.cutoff)
            r_safe = jnp.where(inside, r, term.cutoff)
            total = total + jnp.where(inside, term.shifted_energy(params[term.name], r_safe, si, sj), 0.0)
        return total

    def _constant_energy(self, params):
        e = 0.0
        for term in self.pair_terms:
            if term.self_energy is not None:
                e = e + term.self_energy(params[term.name], jnp.asarray(self.species))
        return e

    def _bonded_energy(self, params, positions):
        return sum((t.energy(params[t.name], positions, self.displacement) for t in self.bonded_terms), 0.0)

    def energy(self, params, positions, nbrs):
        e = self._bonded_energy(params, positions) + self._constant_energy(params)
        if self.pair_terms:
            d, mask, si, sj = self._pairs(positions, nbrs)
            r = safe_norm(d, mask)
            e = e + 0.5 * jnp.sum(self._pair_phi(params, r, mask, si, sj))
        return e

    def _pair_geometry(self, positions, nbrs):
        """(d, r, 1/r, slope) on every slot of the list; slope(params, r) = phi'(r), zero on padded and
        out-of-range slots."""
        d, mask, si, sj = self._pairs(positions, nbrs)
        r = safe_norm(d, mask)
        inv_r = jnp.where(mask, 1.0 / jnp.where(mask, r, 1.0), 0.0)

        def slope(params, r):
            return jax.jvp(lambda r_: self._pair_phi(params, r_, mask, si, sj), (r,), (jnp.ones_like(r),))[1]

        return d, r, inv_r, slope

    def _bonded_forces(self, params, positions):
        return -jax.grad(self._bonded_energy, argnums=1)(params, positions)

    def forces(self, params, positions, nbrs):
        f = self._bonded_forces(params, positions) if self.bonded_terms else jnp.zeros_like(positions)
        if self.pair_terms:
            d, r, inv_r, slope = self._pair_geometry(positions, nbrs)
            f = f - jnp.sum((slope(params, r) * inv_r)[..., None] * d, axis=1)
        return f

    def force_vjp(self, params, positions, nbrs):
        """Forces and their VJP by gathers only.

        Autodiff would transpose the gather x[idx] into a scatter-add over every slot and materialise a
        chain of per-slot intermediates.  Here: the list is full and symmetric (j in row i iff i in row j)
        and the pair force is odd in d, so  sum_i a_i . F_i = 1/2 sum_(i,j) (a_i - a_j) . f(d_ij), whose
        derivative with respect to x_k is sum_j H(d_kj) (a_k - a_j), the pair Hessian being
        -H = phi'/r 1 + (phi'' - phi'/r) d d^T / r^2.  With t = d . (a_i - a_j) the VJP is
            dx_i = -sum_j [gamma t d + beta (a_i - a_j)],  dtheta_k = -sum_(i,j) t (d phi'/d theta_k) / (2 r),
        beta = phi'/r, gamma = (phi'' - beta) / r^2: per-slot coefficients computed with the force (those of
        the parameters by forward mode, one tangent per scalar pair parameter: a handful for a force field),
        then one gather of a and two reductions.  Exact (tested against autodiff); bonded terms by autodiff.
        """
        if not self.pair_terms:
            return super().force_vjp(params, positions, nbrs)
        shared_params, params = params, varying_like(params, positions)
        d, r, inv_r, slope = self._pair_geometry(positions, nbrs)
        dphi, d2phi = jax.jvp(lambda r_: slope(params, r_), (r,), (jnp.ones_like(r),))
        beta = dphi * inv_r
        gamma = (d2phi - beta) * inv_r * inv_r
        f = -jnp.sum(beta[..., None] * d, axis=1)
        bonded_vjp = None
        if self.bonded_terms:
            # The bonded forces as `forces` computes them (a VJP's primal may round differently).
            f = self._bonded_forces(params, positions) + f
            bonded_vjp = jax.vjp(lambda x_, p_: self._bonded_forces(p_, x_), positions, params)[1]
        pair_params = {t.name: params[t.name] for t in self.pair_terms}
        flat, unravel = ravel_pytree(pair_params)
        dslope = jax.vmap(lambda e: jax.jvp(lambda q: slope({**params, **unravel(q)}, r), (flat,), (e,))[1])(
            varying_like(jnp.eye(flat.size, dtype=flat.dtype), positions))
        weight = dslope * (0.5 * inv_r)
        partner = jnp.minimum(nbrs.idx, positions.shape[0] - 1)

        def back(a):
            da = a[:, None, :] - a[partner]
            t = jnp.sum(d * da, axis=-1)
            g_x = -jnp.sum((gamma * t)[..., None] * d + beta[..., None] * da, axis=1).astype(positions.dtype)
            g_pair = unravel(-jnp.sum(weight * t, axis=(1, 2)))
            g_p = {k: g_pair[k] if k in g_pair else jax.tree.map(jnp.zeros_like, v) for k, v in params.items()}
            if bonded_vjp is not None:
                gx_b, gp_b = bonded_vjp(a)
                g_x, g_p = g_x + gx_b, jax.tree.map(jnp.add, g_p, gp_b)
            return g_x, jax.tree.map(cotangent_like, g_p, shared_params)

        return f, back
