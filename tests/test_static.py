"""Static observables with known answers: densities of given boxes, g(r) of an ideal gas (1), of a
simple cubic lattice (first shell at the spacing, 6 neighbours) and of FCC argon (12 neighbours); the
smooth RDF against the histogram and its gradient against finite differences."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist import systems
from dmd_dist.observables import static
from dmd_dist.units import AMU_PER_NM3_TO_G_PER_CM3

AMU_PER_NM3_CODATA = 1.66053906660e-3  # g/cm^3: the dalton 1.66053906660e-27 kg over 1 nm^3


def cubic_lattice(m, spacing, noise=0.0, seed=0):
    x = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    return x + np.random.default_rng(seed).normal(0.0, noise, x.shape), np.full(3, m * spacing)


def fcc_lattice(cells, a, noise=0.0, seed=0):
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    corners = np.stack(np.meshgrid(*[np.arange(cells)] * 3, indexing="ij"), -1).reshape(-1, 3)
    x = (corners[:, None, :] + basis[None]).reshape(-1, 3) * a
    return x + np.random.default_rng(seed).normal(0.0, noise, x.shape), np.full(3, cells * a)


def test_density_of_a_known_box_is_exact_and_agrees_with_system_density():
    masses = np.full(100, 18.015)
    box = np.array([2.0, 3.0, 4.0])
    rho = float(static.density(jnp.asarray(masses), jnp.asarray(box)))
    assert rho == pytest.approx(1801.5 / 24.0 * AMU_PER_NM3_TO_G_PER_CM3, rel=1e-15)  # up to summation order
    # units.py converts with 1 g/mol / N_A; the CODATA 2018 dalton differs from it by 3.4e-10 relative.
    assert rho == pytest.approx(1801.5 / 24.0 * AMU_PER_NM3_CODATA, rel=1e-9)
    s = systems.make_system(np.zeros((100, 3)), masses, box, np.zeros(100), ("X",))
    assert rho == pytest.approx(s.density, rel=1e-15)
    assert float(static.number_density(100, box)) == 100 / 24.0
    # One box per frame (NPT), differentiable in the box: d rho / d L_x = -rho / L_x.
    boxes = jnp.asarray([box, 2 * box])
    np.testing.assert_allclose(static.density(jnp.asarray(masses), boxes), [rho, rho / 8], rtol=1e-15)
    grad = jax.grad(lambda b: static.density(jnp.asarray(masses), b))(jnp.asarray(box))
    np.testing.assert_allclose(grad, -rho / box, rtol=1e-14)


def test_ideal_gas_has_g_equal_to_one_within_statistical_error():
    rng = np.random.default_rng(3)
    n, frames, edge = 400, 10, 2.0
    x = jnp.asarray(rng.uniform(0, edge, (frames, n, 3)))
    box = jnp.full(3, edge)
    r, g = static.radial_distribution(x, box, 1.0, 10)
    np.testing.assert_allclose(r, np.arange(10) * 0.1 + 0.05, atol=1e-15)
    edges = np.linspace(0, 1.0, 11)
    shell = 4 * np.pi / 3 * (edges[1:] ** 3 - edges[:-1] ** 3)
    # Each unordered pair is counted twice, so the variance of a bin is twice its (Poisson) count.
    expected = frames * n * (n - 1) / edge**3 * shell
    sigma = np.sqrt(2.0 / expected)
    assert np.all(np.abs(np.asarray(g) - 1) < 5 * sigma), (np.asarray(g), sigma)
    total = np.sum(np.asarray(g) * expected) / np.sum(expected)
    assert abs(total - 1) < 5 * np.sqrt(2 / np.sum(expected))


def test_species_masks_normalise_like_a_brute_force_count():
    """g_AA (N_a (N_a - 1) pairs), g_AB and g_BA against explicit loops over pairs, two frames."""
    rng = np.random.default_rng(4)
    n, edge, r_max, n_bins = 14, 1.5, 0.75, 5
    x = rng.uniform(0, edge, (2, n, 3))
    a = np.arange(n) < 5
    box = np.full(3, edge)

    def brute(mask_a, mask_b):
        edges = np.linspace(0, r_max, n_bins + 1)
        shell = 4 * np.pi / 3 * (edges[1:] ** 3 - edges[:-1] ** 3)
        out = []
        for f in range(2):
            counts = np.zeros(n_bins)
            pairs = 0
            for i in np.flatnonzero(mask_a):
                for j in np.flatnonzero(mask_b):
                    if i == j:
                        continue
                    pairs += 1
                    d = x[f, i] - x[f, j]
                    r = np.linalg.norm(d - edge * np.round(d / edge))
                    if r < r_max:
                        counts[int(r // (r_max / n_bins))] += 1
            out.append(counts / (pairs / edge**3 * shell))
        return np.mean(out, axis=0)

    for ma, mb in [(a, None), (a, ~a), (~a, a), (None, None)]:
        _, g = static.radial_distribution(jnp.asarray(x), box, r_max, n_bins, ma, mb)
        set_a = np.ones(n, bool) if ma is None else ma  # None: all atoms; mask_b None: the same set as A
        want = brute(set_a, set_a if mb is None else mb)
        np.testing.assert_allclose(g, want, rtol=1e-13, atol=1e-13)


def test_simple_cubic_lattice_first_peak_at_the_spacing_with_six_neighbours():
    a, m = 0.3, 6
    x, box = cubic_lattice(m, a, noise=0.01 * a)
    r, g = static.radial_distribution(jnp.asarray(x), box, 2.5 * a, 125)
    r, g = np.asarray(r), np.asarray(g)
    dr = r[1] - r[0]
    first = r < 1.2 * a  # below the second shell at a sqrt(2)
    assert abs(r[first][np.argmax(g[first])] - a) <= dr
    assert np.all(g[r < 0.9 * a] == 0)  # nothing closer than the spacing
    rho = (len(x) - 1) / np.prod(box)
    assert float(static.coordination_number(r, g, rho, 1.2 * a)) == pytest.approx(6.0, abs=1e-12)
    # Second shell: 12 more at a sqrt(2), third: 8 at a sqrt(3).
    assert float(static.coordination_number(r, g, rho, 1.6 * a)) == pytest.approx(18.0, abs=1e-12)
    assert float(static.coordination_number(r, g, rho, 1.9 * a)) == pytest.approx(26.0, abs=1e-12)


def test_fcc_argon_has_twelve_nearest_neighbours():
    mass, rho_g = 39.948, 1.374
    a = (4 * mass * AMU_PER_NM3_TO_G_PER_CM3 / rho_g) ** (1 / 3)  # 4 atoms per cubic cell
    x, box = fcc_lattice(4, a, noise=0.005)
    s = systems.make_system(x, np.full(len(x), mass), box, np.zeros(len(x)), ("Ar",))
    assert float(static.density(s.masses, s.box)) == pytest.approx(rho_g, rel=1e-12)
    r, g = static.radial_distribution(s.positions, s.box, 1.1, 110)
    r, g = np.asarray(r), np.asarray(g)
    first = r < 0.5
    assert abs(r[first][np.argmax(g[first])] - a / np.sqrt(2)) <= 0.01  # nearest neighbours at a / sqrt 2
    pair_density = (s.n_atoms - 1) / float(np.prod(box))
    assert float(static.coordination_number(r, g, pair_density, 0.5)) == pytest.approx(12.0, abs=1e-12)
    assert float(static.coordination_number(r, g, pair_density, 0.65)) == pytest.approx(18.0, abs=1e-12)


def test_batch_average_per_frame_boxes_and_jit():
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1.6, (3, 50, 3))
    boxes = np.array([[1.6, 1.6, 1.6], [1.7, 1.6, 1.8], [1.65, 1.7, 1.6]])
    singles = [static.radial_distribution(jnp.asarray(x[f]), boxes[f], 0.8, 16)[1] for f in range(3)]
    _, g = static.radial_distribution(jnp.asarray(x), boxes, 0.8, 16)
    np.testing.assert_allclose(g, np.mean(singles, axis=0), rtol=1e-14)
    rdf = jax.jit(functools.partial(static.radial_distribution, r_max=0.8, n_bins=16))
    np.testing.assert_allclose(rdf(jnp.asarray(x), jnp.asarray(boxes))[1], g, rtol=1e-14)
    smooth = jax.jit(functools.partial(static.radial_distribution_smooth, r_max=0.8, n_bins=16, width=0.01))
    gs = np.asarray(smooth(jnp.asarray(x), jnp.asarray(boxes))[1])
    # Independent numpy: per frame, each ordered pair i != j at its minimum-image distance r puts the
    # Gaussian mass (erf((hi - r) / (sqrt 2 w)) - erf((lo - r) / (sqrt 2 w))) / 2 into a bin, normalised by
    # the ideal-gas count N (N - 1) / V_f * 4/3 pi (hi^3 - lo^3) of that frame's box; mean over frames.
    from scipy.special import erf

    edges = np.linspace(0.0, 0.8, 17)
    shell = 4 * np.pi / 3 * np.diff(edges**3)
    want = []
    for f in range(3):
        d = x[f][:, None, :] - x[f][None, :, :]
        d -= boxes[f] * np.round(d / boxes[f])
        r = np.linalg.norm(d, axis=-1)[~np.eye(50, dtype=bool)]
        mass = 0.5 * (erf((edges[1:, None] - r) / (np.sqrt(2) * 0.01)) - erf((edges[:-1, None] - r) / (np.sqrt(2) * 0.01)))
        want.append(mass.sum(1) / (50 * 49 / np.prod(boxes[f]) * shell))
    np.testing.assert_allclose(gs, np.mean(want, axis=0), rtol=1e-10, atol=1e-12)
    # Per-frame boxes matter: the same frames in the first box only give another g.
    assert np.abs(np.asarray(smooth(jnp.asarray(x), jnp.asarray(boxes[0]))[1]) - gs).max() > 1e-2


def test_r_max_beyond_half_the_shortest_edge_is_refused():
    x = jnp.zeros((4, 3))
    box = np.array([2.0, 1.6, 3.0])
    static.radial_distribution(x, box, 0.8, 8)  # exactly half the shortest edge is allowed
    with pytest.raises(ValueError, match="half the shortest box edge"):
        static.radial_distribution(x, box, 0.81, 8)
    with pytest.raises(ValueError, match="half the shortest box edge"):
        static.radial_distribution_smooth(x, box, 0.9, 8, 0.01)
    with pytest.raises(ValueError, match="n_bins"):
        static.radial_distribution(x, box, 0.5, 0)
    with pytest.raises(ValueError, match="width"):
        static.radial_distribution_smooth(x, box, 0.5, 8, 0.0)


def test_smooth_rdf_keeps_the_histogram_integral_and_peaks():
    a, m = 0.3, 6
    x, box = cubic_lattice(m, a, noise=0.01 * a)
    r_max, n_bins = 2.64 * a, 132  # r_max between the shells at a sqrt(6) and a sqrt(8)
    r, g = static.radial_distribution(jnp.asarray(x), box, r_max, n_bins)
    _, gs = static.radial_distribution_smooth(jnp.asarray(x), box, r_max, n_bins, width=0.01 * a)
    rho = (len(x) - 1) / np.prod(box)
    # Cuts at bin edges far (> 8 standard deviations of noise and width together) from every shell.
    for r_cut in (1.2 * a, 1.58 * a, 1.86 * a, r_max):
        assert float(static.coordination_number(r, gs, rho, r_cut)) == pytest.approx(
            float(static.coordination_number(r, g, rho, r_cut)), rel=1e-10)
    first = np.asarray(r) < 1.2 * a
    assert abs(float(r[first][np.argmax(np.asarray(gs)[first])]) - a) <= 0.02 * a


def test_smooth_rdf_gradient_matches_finite_differences():
    a, m = 0.3, 4
    x, box = cubic_lattice(m, a, noise=0.03 * a, seed=1)
    target = static.radial_distribution_smooth(jnp.asarray(cubic_lattice(m, a, 0.05 * a, seed=2)[0]), box,
                                               2.0 * a, 40, 0.05 * a)[1]

    def loss(pos):
        return jnp.sum((static.radial_distribution_smooth(pos, box, 2.0 * a, 40, 0.05 * a)[1] - target) ** 2)

    x = jnp.asarray(x)
    grad = jax.grad(loss)(x)
    direction = jnp.asarray(np.random.default_rng(3).standard_normal(x.shape))
    h = 1e-6
    fd = (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)
    assert float(jnp.sum(grad * direction)) == pytest.approx(float(fd), rel=1e-6)
    # Translation invariance: the gradient sums to zero over atoms.
    np.testing.assert_allclose(jnp.sum(grad, axis=0), 0.0, atol=1e-9 * float(jnp.max(jnp.abs(grad))))
    assert math.isfinite(float(loss(x)))
