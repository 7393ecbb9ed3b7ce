"""Choosing the truncation window from the measured gradient growth.

MD is chaotic: a single trajectory's derivative grows like e^{lambda t}, so the per-replica gradient of a
time-correlation integral explodes once the window outlasts the correlation decay, while the ensemble
average stays smooth.  `gradient_growth` measures, for every replica and every window length T up to
the segment length, the derivative of the Green-Kubo integral D(T) = (1/3) int_0^T <v(0).v(t)> dt along
parameter directions, in one forward-mode pass per direction (memory independent of T).
`suggest_window` picks the T where the replica spread starts to grow faster than the ensemble signal:
the maximum of the signal-to-noise ratio |mean_r g_r(T)| / stderr_r(g_r(T)).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist.adjoint import DirectAdjoint, run_segment


def parameter_directions(params, max_directions=8, key=None):
    """Unit tangents: one per scalar parameter if there are few, else random unit vectors."""
    leaves, treedef = jax.tree.flatten(params)
    sizes = [np.size(x) for x in leaves]
    n = int(sum(sizes))
    if n <= max_directions:
        basis = np.eye(n)
    else:
        basis = np.asarray(jax.random.normal(key if key is not None else jax.random.PRNGKey(0), (max_directions, n)))
        basis /= np.linalg.norm(basis, axis=1, keepdims=True)
    splits = np.cumsum(sizes)[:-1]
    return [jax.tree.unflatten(treedef, [jnp.asarray(p.reshape(np.shape(l)), jnp.result_type(l))
                                         for p, l in zip(np.split(b, splits), leaves)]) for b in basis]


def gradient_growth(seg, params, positions, velocities, nbrs, directions):
    """dD(T)/dtheta . direction for every replica, direction and window T = times[1:].

    positions, velocities: (R, N, 3) frames; nbrs: batched neighbour lists.  Returns (times (K,), g
    (R, n_directions, K)) with D(T) by the trapezoid rule over the records (nm^2/ps per unit parameter).
    """
    dt_rec = seg.dt * seg.record_every

    def vacf(p, x, v, nb):
        res = run_segment(DirectAdjoint(), seg, p, x, v, nb, v)
        return jnp.mean(res.records, axis=-1), res.neighbors

    def one(x, v, nb):
        def along(d):
            (c, lists), (dc, _) = jax.jvp(lambda p: vacf(p, x, v, nb), (params,), (d,))
            return dc, lists.overflow
        dc, overflow = jax.vmap(along)(jax.tree.map(lambda *a: jnp.stack(a), *directions))
        d_int = jnp.cumsum(0.5 * (dc[:, 1:] + dc[:, :-1]), axis=1) * dt_rec / 3.0
        return d_int, jnp.any(overflow)

    g, overflow = jax.jit(jax.vmap(one))(positions, velocities, nbrs)
    if bool(jnp.any(overflow)):
        raise RuntimeError("neighbour list overflowed during the gradient-growth scan; raise capacity_factor")
    times = np.arange(1, seg.n_records) * dt_rec
    return times, np.asarray(g)


@dataclasses.dataclass
class WindowScan:
    times: np.ndarray  # ps
    signal: np.ndarray  # |replica-mean gradient|
    stderr: np.ndarray  # norm of the standard error of the replica mean
    per_trajectory: np.ndarray  # rms over replicas of |g_r|
    snr: np.ndarray
    suggested: float  # ps

    def as_dict(self):
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(self).items()}


def suggest_window(times, g):
    """The window of maximal signal-to-noise of the ensemble gradient (see module docstring)."""
    r = g.shape[0]
    if r < 2:
        raise ValueError("the window scan needs at least 2 replicas to measure the spread")
    mean = g.mean(axis=0)  # (directions, K)
    signal = np.linalg.norm(mean, axis=0)
    stderr = np.sqrt(np.sum(g.var(axis=0, ddof=1), axis=0) / r)
    per_traj = np.sqrt(np.mean(np.sum(g * g, axis=1), axis=0))
    snr = signal / np.maximum(stderr, np.finfo(float).tiny)
    return WindowScan(times, signal, stderr, per_traj, snr, float(times[int(np.argmax(snr))]))


def resolve_window(cfg, system, potential, params, key, min_replicas=8):
    """For `segments.window = "auto"`: scan windows up to `segments.steps` on fresh replica frames and
    return (cfg with `steps` set to the suggested window, the WindowScan).  Other configs pass through."""
    from dmd_dist.driver import OverflowCounter
    from dmd_dist.sampler import advance, init_chains
    from dmd_dist.segments import segment_from_config

    if cfg.segments.window != "auto":
        return cfg, None
    count = max(cfg.replicas.count, min_replicas)
    states = init_chains(cfg, system, potential, params, jax.random.fold_in(key, 2**31 - 1), count)
    states = advance(cfg, system, potential, params, states, max(cfg.sampling.equilibration_steps, 1), OverflowCounter())
    seg = segment_from_config(cfg, system, potential, lambda x, v, p, c: jnp.sum(v * c, axis=-1))
    times, g = gradient_growth(seg, params, states.position, states.velocity, states.neighbors,
                               parameter_directions(params))
    scan = suggest_window(times, g)
    every = cfg.segments.record_every
    steps = max(every, int(round(scan.suggested / cfg.segments.dt / every)) * every)
    segments = cfg.segments.model_copy(update={"steps": steps, "window": None})
    return cfg.model_copy(update={"segments": segments}), scan
