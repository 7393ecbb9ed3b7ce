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
from dmd_dist.driver import run_checked
from dmd_dist.records import frame_context


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


def gradient_growth(seg, params, states, directions, counter, capacity_factor):
    """dD(T)/dtheta . direction for every replica, direction and window T = times[1:].

    seg: a forward segment recording the "vacf" channel (`records.py`); states: batched replica frames
    (positions, integer-time velocities, neighbour lists; an overflowing list is re-allocated through
    `driver.run_checked`).  Returns (times (K,), g (R, n_directions, K)) with D(T) by the trapezoid rule
    over the records (nm^2/ps per unit parameter).
    """
    dt_rec = seg.dt * seg.record_every
    tangents = jax.tree.map(lambda *a: jnp.stack(a), *directions)

    def vacf(p, s):
        res = run_segment(DirectAdjoint(), seg, p, s.position, s.velocity, s.neighbors,
                          frame_context(("vacf",), s.position, s.velocity))
        return res.records["vacf"], res.neighbors

    def one(params, tangents, s):
        def along(d):
            (_, lists), (dc, _) = jax.jvp(lambda p: vacf(p, s), (params,), (d,))
            return dc, lists
        dc, lists = jax.vmap(along)(tangents)
        return jnp.cumsum(0.5 * (dc[:, 1:] + dc[:, :-1]), axis=1) * dt_rec / 3.0, lists

    scan = jax.jit(jax.vmap(one, (None, None, 0)))  # the parameters an argument (docs/architecture.md)
    g, _ = run_checked(lambda s: scan(params, tangents, s), states, seg.dyn.potential.neighbors, counter,
                       capacity_factor)
    return np.arange(1, seg.n_records) * dt_rec, np.asarray(g)


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
