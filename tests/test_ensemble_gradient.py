"""The training estimator of dD/dtheta against a finite difference of the ensemble D with common random
numbers (docs/gradient_accuracy.md), on a small system and a short window."""

from pathlib import Path

import numpy as np
import pytest

from dmd_dist import assemble, ensemble_gradient
from dmd_dist.config import load_config
from dmd_dist.units import BOLTZMANN

ROOT = Path(__file__).resolve().parents[1]
# 108 LJ argon atoms with continuous forces (switched from 0.7 nm: the pathwise derivative through a window
# misses the jumps of a plain cutoff), 0.2 ps windows from 256 frames (32 replicas x 8, 1 ps apart).  Every
# chain first runs 8 ps (8 / friction) at its own parameters: the finite difference compares two
# *equilibrium* ensembles.  With tiny_argon's 0.4 ps the chains at theta +- h still remembered the start
# prepared at theta (a larger sigma or epsilon releases potential energy as heat, which speeds diffusion
# until the thermostat takes it out), and the difference came out with the wrong sign.
SETS = ["potential.switch_onset=0.7", "replicas.count=32", "sampling.frames=8", "sampling.equilibration_steps=2000",
        "sampling.steps_between_frames=250"]
H_SIGMA = 0.003405  # nm, 1% of sigma: D changes by ~2% over 2h


@pytest.fixture(scope="module")
def sigma_gradient():
    cfg = load_config(ROOT / "configs/tiny_argon.toml", SETS)
    system, potential, params, key = assemble.build(cfg)
    built = (system, potential, key)
    u = ensemble_gradient.unit_directions(params, ["lj.sigma"], system.topology.species_names)
    segments = ensemble_gradient.diffusion_segments(cfg, params, u, built=built)
    fd = ensemble_gradient.finite_difference(cfg, params, u, H_SIGMA, built=built)["lj.sigma"]
    return cfg, params, built, segments, fd


def test_per_segment_gradients_are_those_of_direct_backprop(sigma_gradient):
    """Every segment's D is finite and liquid-like, and its derivative under the reverse-time adjoint is
    plain backprop's through the same window (2 replicas, briefly equilibrated, to keep it cheap)."""
    cfg, params, built, segments, _ = sigma_gradient
    assert segments["D"].shape == (256,) and np.all(np.isfinite(segments["dD"]["lj.sigma"]))
    assert 2.0e-3 < segments["D"].mean() < 3.5e-3  # liquid argon at 94.4 K over 0.2 ps windows
    small = load_config(ROOT / "configs/tiny_argon.toml", [*SETS, "replicas.count=2", "sampling.frames=1",
                                                            "sampling.equilibration_steps=100"])
    u = ensemble_gradient.unit_directions(params, ["lj.sigma"], built[0].topology.species_names)
    by = {name: ensemble_gradient.diffusion_segments(
        small.model_copy(update={"segments": small.segments.model_copy(update={"adjoint": name})}), params, u,
        built=built) for name in ("direct", "reverse_time")}
    np.testing.assert_allclose(by["reverse_time"]["dD"]["lj.sigma"], by["direct"]["dD"]["lj.sigma"], rtol=1e-8)
    np.testing.assert_allclose(by["reverse_time"]["D"], by["direct"]["D"], rtol=1e-13)  # the same forward pass


def test_one_sampling_serves_every_window_length():
    """window_segments gives, for each length, what diffusion_segments gives with that `segments.steps`: D cut
    from the longest window's VACF (no directions), or each length's own adjoint window (with directions),
    from the same start frames; a length off the record grid is refused."""
    cfg = load_config(ROOT / "configs/tiny_argon.toml", ["potential.switch_onset=0.7", "replicas.count=2",
                                                         "sampling.frames=2", "sampling.equilibration_steps=50",
                                                         "sampling.steps_between_frames=20"])
    system, potential, params, key = assemble.build(cfg)
    built = (system, potential, key)
    u = ensemble_gradient.unit_directions(params, ["lj.sigma"], system.topology.species_names)

    def alone(steps, directions=None):
        c = cfg.model_copy(update={"segments": cfg.segments.model_copy(update={"steps": steps})})
        return ensemble_gradient.diffusion_segments(c, params, directions, built=built)

    shared = ensemble_gradient.window_segments(cfg, params, [40, 20], built=built)
    assert sorted(shared) == [20, 40]
    for n in (20, 40):
        np.testing.assert_allclose(shared[n]["D"], alone(n)["D"], rtol=1e-12)
    assert not np.allclose(shared[20]["D"], shared[40]["D"], rtol=0.05)  # two lengths, two answers
    with_grad = ensemble_gradient.window_segments(cfg, params, [20, 40], u, built=built)
    for n in (20, 40):
        one = alone(n, u)
        np.testing.assert_allclose(with_grad[n]["D"], one["D"], rtol=1e-12)
        np.testing.assert_allclose(with_grad[n]["D"], shared[n]["D"], rtol=1e-12)
        for k in ("dD", "dU"):
            np.testing.assert_allclose(with_grad[n][k]["lj.sigma"], one[k]["lj.sigma"], rtol=1e-10)
    with pytest.raises(ValueError, match="record_every=5"):
        ensemble_gradient.window_segments(cfg, params, [22], built=built)


def test_estimator_agrees_with_the_finite_difference_and_needs_its_reweighting_term(sigma_gradient):
    """Dynamics + reweighting agree with the common-random-number difference within three combined standard
    errors; the dynamics term alone, or the reweighting term with its sign flipped, agree markedly worse.
    Measured: total -0.0186 +- 0.0091, difference -0.0223 +- 0.0034 nm^2/ps/nm (0.4 combined SE); dynamics
    alone -0.0320 (2.9 SE off), reweighting flipped -0.0454 (2.4 SE off).  The reweighting term (+0.0134 +-
    0.0091) is the noisy one: resolving its sign beyond 3 SE takes about 4x the windows
    (benchmarks/gradient_accuracy.py; docs/gradient_accuracy.md)."""
    cfg, _, _, segments, (fd, fd_err) = sigma_gradient
    terms = ensemble_gradient.estimator_terms(segments, cfg.sampling.temperature)["lj.sigma"]
    (dyn, dyn_err), (rw, _), (total, total_err) = terms["dynamics"], terms["reweighting"], terms["total"]
    z_total = abs(total - fd) / np.hypot(total_err, fd_err)
    assert z_total < 3, (terms, fd, fd_err)
    assert abs(dyn - fd) / np.hypot(dyn_err, fd_err) > z_total + 1.5, (terms, fd, fd_err)  # beta = 0
    assert abs(dyn - rw - fd) / np.hypot(total_err, fd_err) > z_total + 1.5, (terms, fd, fd_err)  # -beta -> +beta


def test_reweighting_term_is_minus_beta_times_the_covariance():
    """estimator_terms on synthetic segments: -beta Cov(dU, D) (1/n normalisation, as the trainer's
    weighted mean gives it), with a jackknife error that shrinks like 1/sqrt(n)."""
    rng = np.random.default_rng(0)
    n, temperature = 4000, 94.4
    du = rng.standard_normal(n)
    d = 0.5 * du + rng.standard_normal(n)
    segments = {"D": d, "dD": {"x": np.full(n, 2.0)}, "dU": {"x": du}}
    terms = ensemble_gradient.estimator_terms(segments, temperature)["x"]
    beta = 1 / (BOLTZMANN * temperature)
    expected = -beta * np.mean((du - du.mean()) * (d - d.mean()))
    assert terms["reweighting"][0] == pytest.approx(expected, rel=1e-12)
    assert terms["dynamics"] == (pytest.approx(2.0), pytest.approx(0.0, abs=1e-12))
    assert terms["total"][0] == pytest.approx(2.0 + expected, rel=1e-12)
    # -beta * 0.5 (the true covariance) within a few standard errors
    assert abs(terms["reweighting"][0] + beta * 0.5) < 4 * terms["reweighting"][1]
    small = ensemble_gradient.estimator_terms({k: (v[:1000] if k == "D" else {"x": v["x"][:1000]})
                                               for k, v in segments.items()}, temperature)["x"]
    assert 1.5 < small["reweighting"][1] / terms["reweighting"][1] < 2.5


def test_errors_over_chains_count_a_chains_correlated_frames_once():
    """Segments ordered chain by chain, each chain's 4 frames identical copies (perfectly correlated): over
    chains, the estimator's values are unchanged and its standard errors are those of the 250 distinct
    segments, not of the 1000 copies (2x larger); the same for a finite difference's per-segment samples."""
    rng = np.random.default_rng(1)
    chains, frames, temperature = 250, 4, 94.4
    du = np.repeat(rng.standard_normal(chains), frames)
    d = np.repeat(rng.standard_normal(chains), frames) + 0.5 * du
    segments = {"D": d, "dD": {"x": d + 1.0}, "dU": {"x": du}}
    distinct = {"D": d[::frames], "dD": {"x": d[::frames] + 1.0}, "dU": {"x": du[::frames]}}
    per_segment, per_chain, reference = (ensemble_gradient.estimator_terms(s, temperature, chains=c)["x"]
                                         for s, c in ((segments, None), (segments, chains), (distinct, None)))
    for term in ("dynamics", "reweighting", "total"):
        assert per_chain[term][0] == pytest.approx(per_segment[term][0], rel=1e-12)
        assert per_chain[term][1] == pytest.approx(reference[term][1], rel=1e-12)
        assert per_chain[term][1] / per_segment[term][1] == pytest.approx(2.0, rel=0.01)
    assert ensemble_gradient.mean_and_stderr(d, chains) == pytest.approx(ensemble_gradient.mean_and_stderr(d[::frames]))
    with pytest.raises(ValueError):
        ensemble_gradient.mean_and_stderr(d, 3)  # 1000 segments are not 3 equal chains


def test_scale_directions_scale_one_group_of_a_network_and_name_an_unknown_prefix():
    """theta + h u multiplies exactly the leaves under the prefix by 1 + h (every readout layer here), and a
    prefix that names no parameter says which paths there are."""
    params = {"readout": {"layers": {"0": {"kernel": np.full((2, 2), 3.0), "bias": np.ones(2)},
                                     "1": {"kernel": np.full((2, 1), -2.0)}}},
              "readouts": {"kernel": np.ones(3)}, "offset": np.full(2, 5.0)}
    u = ensemble_gradient.scale_directions(params, ["readout"])["scale:readout"]
    moved = ensemble_gradient.shifted(params, u, 0.01)
    np.testing.assert_allclose(moved["readout"]["layers"]["0"]["kernel"], 3.03)
    np.testing.assert_allclose(moved["readout"]["layers"]["1"]["kernel"], -2.02)
    np.testing.assert_array_equal(moved["readouts"]["kernel"], params["readouts"]["kernel"])  # a prefix, not a word
    np.testing.assert_array_equal(moved["offset"], params["offset"])
    with pytest.raises(KeyError, match="no parameter path starts with 'readin'"):
        ensemble_gradient.scale_directions(params, ["readin"])
