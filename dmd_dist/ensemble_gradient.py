"""The derivative of an ensemble's diffusion coefficient, segment by segment: the training estimator's two
terms, and the finite difference of the ensemble value that they must add up to (docs/gradient_accuracy.md).

The ensemble D(theta) is the mean over start frames x_i, Boltzmann-distributed at theta, of the Green-Kubo
D_i of the NVE window from each.  Its derivative has two parts, which `train` sums (docs/method.md §4):

    dD/dtheta = <dD_i/dtheta>                        dynamics: through the window (the adjoint)
              - beta Cov(dU(x_i)/dtheta, D_i)        reweighting: the frames' own distribution

`diffusion_segments` samples the frames as `simulate` does (`sampling`, `replicas`, `seed` of the config)
and returns, per segment, D_i and optionally dD_i/dtheta and dU_i/dtheta projected on given directions.
Every replica's noise is fixed by the seed and its index, so runs at theta + h u and theta - h u share
their random numbers: their per-segment difference is the finite difference with common random numbers.
Both sides start every chain from the system prepared with the config's parameters, so
`sampling.equilibration_steps` must let the chains at theta +- h forget it (several 1/friction): otherwise
the difference measures the transient (a start that sits higher on the new surface heats up) and not the
equilibrium ensemble (docs/gradient_accuracy.md).
"""

import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist import assemble
from dmd_dist.driver import OverflowCounter, run_checked, scan_steps
from dmd_dist.observables.stats import jackknife
from dmd_dist.observables.transport import green_kubo_diffusion
from dmd_dist.params import assign, leaf_paths
from dmd_dist.progress import progress_bar
from dmd_dist.records import frame_context
from dmd_dist.sampler import advance
from dmd_dist.segments import run_window
from dmd_dist.units import BOLTZMANN


def unit_directions(params, names, species_names=()):
    """{name: pytree like params, 1 at the scalar called `name` (params.flat_names), 0 elsewhere}."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    return {name: assign(zeros, {name: 1.0}, species_names) for name in names}


def scale_directions(params, prefixes):
    """{"scale:PREFIX": pytree equal to params on the leaves whose dotted path (params.leaf_paths) is PREFIX or
    starts with PREFIX + ".", 0 elsewhere}.  theta + h u scales that group of a network by 1 + h: directions
    with a meaning in a parameter space of thousands (the readout's weights set the energy scale, as epsilon
    does for LJ; an interaction's filter, the shape of the radial coupling), and a relative step h."""
    paths = leaf_paths(params)
    out = {}
    for prefix in prefixes:
        chosen = [p == prefix or p.startswith(prefix + ".") for p in paths]
        if not any(chosen):
            raise KeyError(f"no parameter path starts with {prefix!r}; paths are {paths}")
        leaves = [leaf if c else jnp.zeros_like(leaf) for leaf, c in zip(jax.tree.leaves(params), chosen)]
        out[f"scale:{prefix}"] = jax.tree.unflatten(jax.tree.structure(params), leaves)
    return out


def shifted(params, direction, h):
    """params + h u."""
    return jax.tree.map(lambda p, u: p + h * u, params, direction)


def diffusion_segments(cfg, params, directions=None, built=None):
    """Per-segment arrays over the config's replicas x frames (segment = replica-major):
    "D" (nm^2/ps) and, when `directions` ({name: pytree like params}) is given, "dD" and "dU"
    ({name: (segments,)}): dD_i/dtheta . u through the window under `segments.adjoint`, and
    dU(x_i)/dtheta . u at the start frame.  `built`: (system, potential, key) of `assemble.build(cfg)`,
    to reuse; the chains start from that prepared system whatever `params` are."""
    steps = cfg.segments.steps
    return window_segments(cfg, params, (steps,), directions, built)[steps]


def window_segments(cfg, params, windows, directions=None, built=None, progress=None):
    """`diffusion_segments` for several window lengths from the same start frames: {steps: per-segment
    arrays}, `windows` in steps (multiples of `segments.record_every`).  The chains are sampled once; without
    directions every D comes from the longest window's VACF cut at each length (the same trajectory), with
    directions each length runs its own window under the adjoint.  `progress`: the label of a progress bar
    over the frames (stderr), or None for none."""
    if cfg.segments.bidirectional:
        raise ValueError("diffusion_segments: forward windows only (segments.bidirectional = false)")
    system, potential, key = built if built is not None else _built(cfg)
    smp, every = cfg.sampling, cfg.segments.record_every
    windows = sorted(set(int(n) for n in windows))
    if any(n <= 0 or n % every for n in windows):
        raise ValueError(f"window lengths {windows} must be positive multiples of segments.record_every={every}")
    nvt = assemble.sampler(cfg, system, potential)
    dt_record = cfg.segments.dt * every

    def engine(n):  # the segment and adjoint of an n-step window
        c = cfg.model_copy(update={"segments": cfg.segments.model_copy(update={"steps": n})})
        return assemble.adjoint(c), assemble.segment(c, system, potential, ("vacf",))

    engines = {n: engine(n) for n in (windows if directions is not None else windows[-1:])}

    def vacf(n, p, s):
        adjoint, seg = engines[n]
        w = run_window(adjoint, seg, p, s.position, s.velocity, s.neighbors,
                       frame_context(("vacf",), s.position, s.velocity))
        return w.records["vacf"], w.neighbors

    def window_d(n, p, s):
        c, lists = vacf(n, p, s)
        return green_kubo_diffusion(c, dt_record), lists

    def projected(grad, u):
        return sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(u)))

    def one(p, s):
        s = scan_steps(nvt.step, p, s, smp.steps_between_frames)[0]
        if directions is None:
            c, lists = vacf(windows[-1], p, s)
            return s, ({n: {"D": green_kubo_diffusion(c[:n // every + 1], dt_record)} for n in windows}, [lists])
        g_u = jax.grad(potential.energy)(p, s.position, s.neighbors)
        dU = {name: projected(g_u, u) for name, u in directions.items()}
        out, lists = {}, []
        for n in windows:
            (d, nbrs), g_d = jax.value_and_grad(lambda q: window_d(n, q, s), has_aux=True)(p)
            out[n] = {"D": d, "dD": {name: projected(g_d, u) for name, u in directions.items()}, "dU": dU}
            lists.append(nbrs)
        return s, (out, lists)

    frame = jax.jit(jax.vmap(one, (None, 0)))
    counter = OverflowCounter()
    states = assemble.chains(cfg, system, potential, params, key, cfg.replicas.count)
    states = advance(nvt, potential, params, states, smp.equilibration_steps, counter, cfg.potential.capacity_factor)
    rows = []
    with progress_bar(smp.frames, progress or "", "frame", progress is not None) as bar:
        for _ in range(smp.frames):
            states, (out, _) = run_checked(lambda s: frame(params, s), states, potential.neighbors, counter,
                                           cfg.potential.capacity_factor)
            rows.append(jax.tree.map(np.asarray, out))
            bar.update()
    return jax.tree.map(lambda *a: np.stack(a, 1).reshape(-1), *rows)  # (replica, frame) -> segment


def by_chain(samples, chains):
    """Per-segment samples (segments first, replica-major as `diffusion_segments` orders them) averaged over
    each chain's frames: `chains` blocks for a jackknife or a standard error that does not count the
    correlated frames of one chain as independent.  `chains` None: the segments themselves."""
    samples = np.asarray(samples)
    return samples if chains is None else samples.reshape((chains, -1) + samples.shape[1:]).mean(1)


def estimator_terms(segments, temperature, chains=None):
    """The training estimator of dD/dtheta . u from `diffusion_segments` with directions, per direction:
    {"dynamics", "reweighting", "total"}: (value, jackknife standard error over segments, or over chains
    when `chains` is given: see `by_chain`)."""
    beta = 1.0 / (BOLTZMANN * temperature)
    d = segments["D"]
    out = {}
    for name, dd in segments["dD"].items():
        samples = by_chain(np.stack([dd, segments["dU"][name], d, segments["dU"][name] * d], 1), chains)

        def reweighting(m):  # -beta Cov(dU, D) from the means of dU, D and dU D
            return -beta * (m[3] - m[1] * m[2])

        out[name] = {"dynamics": jackknife(samples, lambda m: m[0]),
                     "reweighting": jackknife(samples, reweighting),
                     "total": jackknife(samples, lambda m: m[0] + reweighting(m))}
    return out


def finite_difference_segments(cfg, params, directions, h, built=None, windows=None, progress=False):
    """Per-segment central differences (D_i(theta + h u) - D_i(theta - h u)) / 2h along each direction, with
    common random numbers: {name: (segments,)}; with `windows` (steps), {steps: {name: (segments,)}} from
    one longest window per frame and side (`window_segments`).  `progress`: a progress bar per side."""
    built = built if built is not None else _built(cfg)
    lengths = (cfg.segments.steps,) if windows is None else windows
    out = {}
    for name in directions:
        plus, minus = (window_segments(cfg, shifted(params, directions[name], s), lengths, built=built,
                                       progress=f"{name} {'+' if s > 0 else '-'}h" if progress else None)
                       for s in (h, -h))
        out[name] = {n: (plus[n]["D"] - minus[n]["D"]) / (2 * h) for n in plus}
    if windows is None:
        return {name: by_length[cfg.segments.steps] for name, by_length in out.items()}
    return {n: {name: out[name][n] for name in out} for n in sorted(set(lengths))}


def mean_and_stderr(samples, chains=None):
    """(mean, standard error of the mean) of per-segment samples, over segments or over chains (`by_chain`)."""
    x = by_chain(samples, chains)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))


def finite_difference(cfg, params, directions, h, built=None):
    """Central difference of the ensemble D along each direction, (D(theta + h u) - D(theta - h u)) / 2h,
    with common random numbers: (value, standard error of the mean of the per-segment differences)."""
    return {name: mean_and_stderr(diff) for name, diff in finite_difference_segments(cfg, params, directions, h,
                                                                                      built).items()}


def _built(cfg):
    system, potential, _, key = assemble.build(cfg)
    return system, potential, key
