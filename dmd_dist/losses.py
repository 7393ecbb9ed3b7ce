"""Losses on ensemble observables: scalar targets, curve targets (spectra) and their weighted sum.

A target is built once, outside jit, from its config entry (curve files are read and interpolated onto
the model's grid here); `target(prediction)` is then a pure, differentiable function of the predicted
observable.  `TargetSet` adds the weighted terms and reports each one, so a run can log which target
drives the loss.

Scales: a scalar loss is weight * ((pred - value) / scale)^2 with scale = |value| unless given, so
weights compare relative errors of quantities in different units (the paper's 1e6 (D - D*)^2 differs
only by a constant factor, to which Adam is invariant).  A curve loss is weight * sum over regions of
region_weight * integral over the region of (I - I*)^2 d(omega): an integral rather than the paper's sum
over grid points, so that it does not change with the grid spacing.
"""

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from dmd_dist.errors import InputError

SCALAR_OBSERVABLES = ("diffusion", "diffusion_msd", "viscosity", "density")
CURVE_OBSERVABLES = ("vacf", "vdos", "ir", "rdf")


@dataclasses.dataclass(frozen=True)
class ScalarTarget:
    observable: str
    value: float
    weight: float = 1.0
    scale: float | None = None
    reweight: bool = True  # gradient through the ensemble weights too (TargetSet)

    def __call__(self, prediction):
        scale = abs(self.value) if self.scale is None else self.scale
        return self.weight * ((prediction - self.value) / scale) ** 2


@dataclasses.dataclass(frozen=True, eq=False)
class CurveTarget:
    """Target curve `values` on the model's grid `x`; `mask_weights` holds each grid point's region
    weight times its trapezoid weight (0 outside every region)."""

    observable: str
    x: np.ndarray
    values: np.ndarray
    mask_weights: np.ndarray
    weight: float = 1.0
    reweight: bool = True

    def __call__(self, prediction):
        return self.weight * jnp.sum(jnp.asarray(self.mask_weights) * (prediction - jnp.asarray(self.values)) ** 2)


def read_curve(path, key="file"):
    """Two numeric columns (x, y), `#` comments; x strictly increasing.  Bad files raise InputError(key)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(key, f"no such file: {path}")
    try:
        data = np.loadtxt(path, comments="#", ndmin=2)
    except ValueError as e:
        raise InputError(key, f"{path} is not two numeric columns ({e})") from None
    if data.shape[1] != 2 or data.shape[0] < 4:
        raise InputError(key, f"{path} must have two columns and at least 4 rows, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise InputError(key, f"{path} contains non-finite numbers")
    if np.any(np.diff(data[:, 0]) <= 0):
        raise InputError(key, f"{path}: the first column must increase strictly")
    return data[:, 0], data[:, 1]


def curve_target(observable, grid, x, y, regions=None, weight=1.0, key="targets"):
    """CurveTarget for `grid` (the model's x values): the target (x, y) cubic-interpolated onto it.

    `regions`: [(lo, hi, region_weight), ...] in the grid's units; default one region spanning the data.
    Grid points outside the data range get no weight (no extrapolation).
    """
    from scipy.interpolate import CubicSpline

    grid = np.asarray(grid, float)
    regions = [(float(x[0]), float(x[-1]), 1.0)] if not regions else regions
    trapezoid = np.gradient(grid) if grid.size > 1 else np.ones(1)  # = trapezoid weights inside the grid
    inside_data = (grid >= x[0]) & (grid <= x[-1])
    w = np.zeros_like(grid)
    for i, region in enumerate(regions):
        if len(region) != 3 or not region[0] < region[1] or region[2] < 0:
            raise InputError(f"{key}.regions[{i}]", f"expected [lo, hi, weight] with lo < hi, weight >= 0; got "
                                                    f"{list(region)}")
        lo, hi, rw = map(float, region)
        w += rw * ((grid >= lo) & (grid < hi))
    w = w * inside_data * trapezoid
    if not np.any(w > 0):
        raise InputError(f"{key}.regions", f"no grid point of the model ({grid[0]:g}..{grid[-1]:g}) lies in a "
                                           "weighted region covered by the target data")
    values = np.where(inside_data, CubicSpline(x, y)(np.clip(grid, x[0], x[-1])), 0.0)
    return CurveTarget(observable, grid, values, w, float(weight))


@dataclasses.dataclass(frozen=True)
class TargetSet:
    targets: tuple

    @property
    def reweighted(self) -> bool:
        return any(t.reweight for t in self.targets)

    def __call__(self, predictions, reweighted=None):
        """(total loss, {observable: its weighted term}); predictions maps observable -> value or curve.

        `reweighted`: the same observables from the reweighted ensemble average (equal values, and a
        gradient that holds the ensemble term); targets with `reweight` use these when given.
        """
        terms = {}
        for t in self.targets:
            preds = reweighted if (t.reweight and reweighted is not None) else predictions
            if t.observable not in preds:
                raise KeyError(f"no prediction for target observable {t.observable!r}")
            terms[t.observable] = terms.get(t.observable, 0.0) + t(preds[t.observable])
        return sum(terms.values(), 0.0), terms


def build_targets(cfg_targets, grids=None):
    """TargetSet from the config's `[[targets]]` (validated: scalar or curve, files resolved by
    `load_config`); `grids` maps each curve observable to the model's x grid."""
    grids = grids or {}
    out = []
    for i, t in enumerate(cfg_targets):
        key = f"targets.{i}"
        if t.observable in SCALAR_OBSERVABLES:
            out.append(ScalarTarget(t.observable, float(t.value), t.weight, t.scale, t.reweight))
            continue
        if t.observable not in grids:
            raise InputError(f"{key}.observable", f"{t.observable} is not computed for this system")
        x, y = read_curve(t.file, f"{key}.file")
        out.append(dataclasses.replace(curve_target(t.observable, grids[t.observable], x, y, t.regions, t.weight, key),
                                       reweight=t.reweight))
    return TargetSet(tuple(out))
