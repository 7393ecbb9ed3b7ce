"""`gradcheck`: the gradient of a window's loss by every adjoint strategy and by finite differences.

Until targets are configured the loss is the Green-Kubo self-diffusion estimate of one window,
D = (1/3) int <v_i(0) . v_i(t)>_i dt (trapezoid, nm^2/ps), whose parameter gradient is what the argon
workflow descends.  Finite differences are central, one parameter at a time, on the same frame.
"""

import time

import jax
import jax.numpy as jnp

from dmd_dist import assemble
from dmd_dist.adjoint import CheckpointAdjoint, DirectAdjoint, ReverseTimeAdjoint
from dmd_dist.assemble import build
from dmd_dist.driver import OverflowCounter, run_checked
from dmd_dist.integrators import MDState
from dmd_dist.observables.transport import green_kubo_diffusion
from dmd_dist.params import flatten, perturb
from dmd_dist.records import frame_context
from dmd_dist.segments import default_checkpoint_every, run_window


def gradcheck(cfg, fd_step=None, fd_max=8):
    """Compare gradient strategies on the config's system, potential and segment settings; returns a dict.

    Finite differences cover at most `fd_max` parameters (those with the largest adjoint gradients), so
    that networks with thousands of weights stay affordable.
    """
    system, potential, params, key = build(cfg)
    cfg, scan = assemble.resolve_window(cfg, system, potential, params, key)
    seg_cfg = cfg.segments
    x0, v0 = system.positions, system.velocities
    seg = assemble.segment(cfg, system, potential, ("vacf",))
    dt_record = seg.dt * seg.record_every
    every = default_checkpoint_every(seg.n_steps, seg.record_every)
    strategies = {"adjoint": ReverseTimeAdjoint(), "checkpoint": CheckpointAdjoint(every), "direct": DirectAdjoint()}
    counter = OverflowCounter()
    frame = MDState(x0, v0, None, potential.neighbors.allocate(x0))

    def loss_fn(adjoint):
        def loss(p, x, v, probe, nbrs):
            w = run_window(adjoint, seg, p, x, v, nbrs, frame_context(("vacf",), x, v), seg_cfg.bidirectional, probe)
            lists = (w.neighbors,) + ((w.neighbors_backward,) if seg_cfg.bidirectional else ())
            return green_kubo_diffusion(w.records["vacf"], dt_record), lists
        return loss

    def checked(fn, *args):
        """fn(..., nbrs) -> (out, lists), re-run with a larger list of the frame while any list overflowed;
        the grown list is kept for the next call."""
        nonlocal frame
        (out, _), frame = run_checked(lambda f: (fn(*args, f.neighbors), f), frame, potential.neighbors, counter,
                                      cfg.potential.capacity_factor)
        return out

    names = list(flatten(params, system.topology.species_names))
    species = system.topology.species_names
    out = {"precision": cfg.precision, "window_ps": seg.n_steps * seg.dt * (2 if seg_cfg.bidirectional else 1),
           "n_atoms": system.n_atoms, "steps": seg.n_steps, "record_every": seg.record_every,
           "bidirectional": seg_cfg.bidirectional, "checkpoint_every": every}
    grads, seconds = {}, {}
    for label, adjoint in strategies.items():
        vg = jax.jit(jax.value_and_grad(loss_fn(adjoint), argnums=(0, 1, 2, 3), has_aux=True))

        def run(p, x, v, probe, nb):
            (value, lists), g = vg(p, x, v, probe, nb)
            return (value, g), lists

        checked(run, params, x0, v0, jnp.zeros((), x0.dtype))  # compile (and size the list)
        t = time.perf_counter()
        value, g = checked(run, params, x0, v0, jnp.zeros((), x0.dtype))
        jax.block_until_ready(g)
        seconds[label] = time.perf_counter() - t
        grads[label] = g
        out[label] = flatten(g[0], species)
        out["loss"] = float(value)
    out["reconstruction_error"] = float(grads["adjoint"][3])

    value_only = jax.jit(lambda p, nb: loss_fn(DirectAdjoint())(p, x0, v0, jnp.zeros((), x0.dtype), nb))
    default_step = 1e-5 if cfg.precision == "float64" else 3e-3
    step = fd_step or default_step
    flat = flatten(params, species)
    fd = {}
    fd_names = sorted(names, key=lambda n: -abs(out["adjoint"][n]))[:fd_max]
    for name in fd_names:
        h = step * max(abs(flat[name]), 1e-3)
        up = checked(value_only, perturb(params, name, h, species))
        down = checked(value_only, perturb(params, name, -h, species))
        fd[name] = float((up - down) / (2 * h))
    out["finite_difference"] = fd
    out["fd_step_relative"] = step

    def rel(a, b):
        return max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-300) for k in b)

    out["n_params"] = len(names)
    out["max_rel_err_direct"] = rel(out["adjoint"], out["direct"])
    out["max_rel_err_checkpoint"] = rel(out["checkpoint"], out["direct"])
    out["max_rel_err_fd"] = rel(out["adjoint"], fd)
    state_a, state_d = grads["adjoint"][1:3], grads["direct"][1:3]
    out["max_rel_err_direct_state"] = max(float(jnp.max(jnp.abs(a - d)) / jnp.max(jnp.abs(d)))
                                          for a, d in zip(state_a, state_d))
    out["seconds"] = seconds
    if scan is not None:
        out["window_scan"] = scan.as_dict()
    out["neighbor_reallocations"] = counter.reallocations
    return out
