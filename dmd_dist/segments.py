"""NVE windows started from sampled frames: forward, or bidirectional (centred on the frame).

This is the one NVE engine of every command: `train`, `simulate`, `gradcheck` and the window scan all
run `run_window` over an `adjoint.Segment`, with records from `records.py`.  A frame is (positions,
integer-time velocities), as the Langevin sampler produces them; `run_segment` converts to leap-frog
half-step velocities itself, so frames from any integrator are used consistently.

Bidirectional windows (used for spectra) also run the segment from (x, -v): by time reversibility that is
the trajectory *before* the frame, traversed backwards.  Its records are taken with the velocity sign
restored and reversed in time, then joined to the forward records at the shared frame: 2K+1 records
spanning [-T, T].  Both halves are one segment vectorised over the sign of the start velocity (their
neighbour lists rebuilt together), and the gradient flows through both with the same adjoint strategy.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from dmd_dist.adjoint import CheckpointAdjoint, DirectAdjoint, ReverseTimeAdjoint, Segment, run_segment
from dmd_dist.integrators import kinetic_energy
from dmd_dist.varying import varying_like


def adjoint_strategy(name, n_steps, record_every, checkpoint_every=None):
    """The strategy object for `segments.adjoint`."""
    if name == "reverse_time":
        return ReverseTimeAdjoint()
    if name == "direct":
        return DirectAdjoint()
    if name == "checkpoint":
        return CheckpointAdjoint(checkpoint_every or default_checkpoint_every(n_steps, record_every))
    raise ValueError(f"unknown adjoint {name!r}")


def default_checkpoint_every(n_steps, record_every):
    """About sqrt(n_steps) steps per stored state (the memory/recompute balance), in whole record
    intervals that divide the segment evenly."""
    n_blocks = n_steps // record_every
    target = max(1, round(math.sqrt(n_steps) / record_every))
    group = min((g for g in range(1, n_blocks + 1) if n_blocks % g == 0), key=lambda g: abs(g - target))
    return group * record_every


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Window:
    records: object  # leading axis: K+1 (forward) or 2K+1 (bidirectional, time -T..T)
    times: jax.Array  # ps, relative to the frame
    position: jax.Array  # end of the forward half
    velocity: jax.Array
    neighbors: object  # forward half's final list
    neighbors_backward: object  # backward half's final list (None for forward windows)
    position_backward: jax.Array | None = None  # end of the backward half (its velocity sign as run)
    velocity_backward: jax.Array | None = None


def run_window(adjoint, seg: Segment, params, x0, v0, nbrs0, context=None, bidirectional=False, probe=None):
    """Forward or bidirectional window from the frame (x0, v0).  `context`: what the records read of the
    frame (`records.frame_context`).  `probe`: see `adjoint.run_segment` (the reconstruction errors of
    both halves add up in its cotangent)."""
    k = seg.n_records
    times = jnp.arange(k) * seg.record_every * seg.dt
    if not bidirectional:
        fwd = run_segment(adjoint, seg, params, x0, v0, nbrs0, context, probe)
        return Window(fwd.records, times, fwd.position, fwd.velocity, fwd.neighbors, None)
    # Both halves as one segment vectorised over the sign of the start velocity, each recording with its
    # sign restored: the segment and its adjoint are traced, compiled and stepped once, not twice.
    signed = dataclasses.replace(seg, record=lambda s, p, c: seg.record(
        dataclasses.replace(s, velocity=c[1] * s.velocity), p, c[0]))
    signs = varying_like(jnp.array([1, -1], v0.dtype), v0)  # per replica, like the frame, inside shard_map
    halves = jax.vmap(lambda sign: run_segment(adjoint, signed, params, x0, sign * v0, nbrs0, (context, sign),
                                               probe))(signs)
    fwd, bwd = (jax.tree.map(lambda a: a[i], halves) for i in (0, 1))
    records = jax.tree.map(lambda b, f: jnp.concatenate([b[:0:-1], f]), bwd.records, fwd.records)
    times = jnp.concatenate([-times[:0:-1], times])
    return Window(records, times, fwd.position, fwd.velocity, fwd.neighbors, bwd.neighbors, bwd.position, bwd.velocity)


def energy_error(potential, masses, params, x0, v0, nbrs0, window: Window):
    """Largest |E(end) - E(frame)| per atom (kJ/mol) over the window's halves, E = U + K: how far its NVE
    integration strayed from energy conservation (a window that blew up strays by orders of magnitude).
    Not differentiated."""
    params = jax.lax.stop_gradient(params)

    def total(x, v, nbrs):
        x, v = jax.lax.stop_gradient((x, v))
        return potential.energy(params, x, nbrs) + kinetic_energy(v, masses)

    e0 = total(x0, v0, nbrs0)
    error = jnp.abs(total(window.position, window.velocity, window.neighbors) - e0)
    if window.position_backward is not None:
        error = jnp.maximum(error, jnp.abs(total(window.position_backward, window.velocity_backward,
                                                 window.neighbors_backward) - e0))
    return error / x0.shape[0]


def over_frames(fn, batching):
    """`fn(params, *frame_args)` over the leading axis of every frame argument, `params` shared: "vmap" runs
    the frames as one vectorised program (what fills a GPU), "map" one after another (`lax.map`), which in
    float64 on CPUs makes a training iteration 8-21% cheaper: a window's backward pass then streams one
    frame's slot-sized arrays at a time, and each frame decides its own neighbour-list rebuilds
    (docs/adjoint_cost.md)."""
    if batching == "vmap":
        return lambda params, *xs: jax.vmap(lambda *x: fn(params, *x))(*xs)
    if batching == "map":
        return lambda params, *xs: jax.lax.map(lambda x: fn(params, *x), xs)
    raise ValueError(f"batching must be 'vmap' or 'map', not {batching!r}")
