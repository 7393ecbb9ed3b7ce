"""The training objective: what each segment records, how segments add up, and the loss of their mean.

Three pure pieces, so that the sharded step can put the replica reduction between them:

- `channels`: what each segment records, only what the targets need (the paper's v(0).v(t) for
  diffusion, the total dipole for IR), defined once in `records.py`;
- `segment_sums(window_records)`, `frame_sums(start_position)`: per segment, the additive statistics (a
  VACF, a dipole-derivative ACF; the start frame's g(r) for a static RDF target); averaging these over all
  segments of all replicas is the ensemble average;
- `predictions(mean_sums)`: the observables from the ensemble averages, differentiable, on fixed grids
  (the curve targets are interpolated onto these grids once, in `build_targets`).

Reweighting (docs/method.md §4): the start frames are Boltzmann samples at the current parameters, so
their distribution depends on theta too.  `reweighted_mean` averages the segment statistics with weights
w_i(theta) proportional to exp(-beta [U_theta(x_i) - U_sample(x_i)]); the frames are sampled afresh at
every iteration, so U_sample = U_theta held constant, the weights equal 1/count in value, and their
derivative adds the ensemble term -beta Cov(dU/dtheta, c) to the gradient of each target with `reweight`.
A static target (the RDF of the start frames) has no other gradient: it must reweight.
"""

import dataclasses

import jax
import jax.numpy as jnp

from dmd_dist.assemble import rdf_range
from dmd_dist.errors import InputError
from dmd_dist.losses import build_targets
from dmd_dist.observables import reweight, spectra
from dmd_dist.observables.static import bin_edges, radial_distribution
from dmd_dist.observables.transport import green_kubo_diffusion
from dmd_dist.records import has_dipole
from dmd_dist.units import BOLTZMANN

SUPPORTED = ("diffusion", "vacf", "ir", "rdf")


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    channels: tuple  # what each segment records (`records.py`): "vacf" and/or "dipole"
    dt_record: float
    n_records: int  # per window (2K+1 for bidirectional)
    bidirectional: bool
    temperature: float  # K, of the sampled ensemble
    volume: float
    n_grid: int
    targets: object  # losses.TargetSet
    rdf: tuple | None = None  # (box, r_max, n_bins) of an RDF target: g(r) of every start frame

    def segment_sums(self, records):
        out = {}
        if "vacf" in self.channels:
            vacf = records["vacf"]
            out["vacf"] = vacf[self.n_records // 2:] if self.bidirectional else vacf  # t >= 0 half
        if "dipole" in self.channels:
            out["ir_acf"] = spectra.dipole_derivative_acf(records["dipole"], self.dt_record)
        return out

    def frame_sums(self, position):
        """The start frame's own statistics: its g(r) (all atoms) for an RDF target."""
        if self.rdf is None:
            return {}
        box, r_max, n_bins = self.rdf
        return {"rdf": radial_distribution(position, box, r_max, n_bins)[1]}

    def predictions(self, mean):
        out = {"rdf": mean["rdf"]} if "rdf" in mean else {}
        if "vacf" in mean:
            out["vacf"] = mean["vacf"]
            out["diffusion"] = green_kubo_diffusion(mean["vacf"], self.dt_record)
        if "ir_acf" in mean:
            out["ir"] = spectra.ir_spectrum(mean["ir_acf"], self.dt_record, self.temperature, self.volume,
                                            n_grid=self.n_grid)
        return out

    @property
    def reweighted(self) -> bool:
        """Whether any target takes the ensemble term (then the loss needs each frame's energy)."""
        return self.targets.reweighted

    def reweighted_mean(self, sums, ok, energies, axis_name=None):
        """Weighted mean over frames (leading axis, and over `axis_name`) of the segment statistics `sums`;
        frames with `ok` False get weight 0.  `energies`: U_theta of each start frame, kJ/mol."""
        log_w = reweight.log_weights(energies, jax.lax.stop_gradient(energies), 1.0 / (BOLTZMANN * self.temperature),
                                     axis_name=axis_name, valid=ok)
        return jax.tree.map(lambda s: reweight.weighted_mean(s, log_w, axis_name), sums)

    def loss(self, mean, reweighted_mean=None):
        """(loss, predictions, terms); targets with `reweight` use `reweighted_mean` where given."""
        preds = self.predictions(mean)
        reweighted = None if reweighted_mean is None else self.predictions(reweighted_mean)
        total, terms = self.targets(preds, reweighted)
        return total, preds, terms


def build_objective(cfg, system, potential):
    """Objective for the config's targets (diffusion, vacf, ir, rdf); bad target sets raise InputError."""
    if not cfg.targets:
        raise InputError("targets", "training needs at least one [[targets]] entry")
    channels = set()
    for i, t in enumerate(cfg.targets):
        if t.observable not in SUPPORTED:
            raise InputError(f"targets.{i}.observable", f"{t.observable!r} cannot be trained on yet "
                                                        f"(supported: {', '.join(SUPPORTED)})")
        if t.observable == "ir":
            if not has_dipole(potential):
                raise InputError(f"targets.{i}.observable", "an IR target needs a dipole: a potential with "
                                 "charges, or a [dipole] model (dipole.model = 'charges' or 'learned')")
            channels.add("dipole")
        elif t.observable == "rdf":
            if not t.reweight:
                raise InputError(f"targets.{i}.reweight", "an rdf target is a static average of the start frames: "
                                 "its only gradient is the reweighting term (set reweight = true)")
        else:
            channels.add("vacf")
    seg = cfg.segments
    k = seg.steps // seg.record_every
    n_records = 2 * k + 1 if seg.bidirectional else k + 1
    dt_record = seg.dt * seg.record_every
    n_grid = spectra.grid_size(n_records)
    grids = {"vacf": (jnp.arange(k + 1) * dt_record), "ir": spectra.wavenumber_grid(dt_record, n_grid)}
    rdf = None
    if any(t.observable == "rdf" for t in cfg.targets):
        rdf = (jnp.asarray(system.box), rdf_range(cfg, system), cfg.observables.rdf_bins)  # as `simulate` reports it
        edges = bin_edges(*rdf[1:])
        grids["rdf"] = 0.5 * (edges[1:] + edges[:-1])
    targets = build_targets(cfg.targets, grids)
    return Objective(tuple(sorted(channels)), dt_record, n_records, seg.bidirectional, cfg.sampling.temperature,
                     system.volume, n_grid, targets, rdf)
