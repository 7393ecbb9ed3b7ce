"""How to differentiate an NVE segment: strategy objects in the spirit of Diffrax's adjoints.

All three strategies compute the same function — a leap-frog segment of `n_steps` from (x_0, u_0), with
records r_k = record(x_n, v_n, params, context) at n = k * record_every, k = 0..K (K = n_steps /
record_every, so both ends are recorded) — and differ only in how its gradient is obtained:

- `DirectAdjoint`: plain reverse-mode autodiff through the scan.  Exact, memory O(n_steps * N): the
  reference for the others.
- `CheckpointAdjoint(every)`: autodiff with the scan rematerialised in groups of `every` steps: stores
  one state per group and recomputes inside it.  Exact; memory O(n_steps / every * N); robust in float32.
- `ReverseTimeAdjoint`: `jax.custom_vjp`.  The forward pass keeps only the records and the final state;
  the backward pass walks the trajectory backwards with the time-reversed integrator to rebuild each
  step's input, and applies that step's VJP.  Memory O(N) plus the records, independent of n_steps.
  Exact up to the floating-point reconstruction error, which grows like e^{lambda t} in a chaotic
  system: float64 reproduces direct backprop to ~1e-12 over a ~2 ps liquid-argon window, float32 only
  over short windows.  The measured max |x_hat_0 - x_0| (nm) of every segment is reported: it arrives as
  the cotangent of the `probe` input (see `run_segment`), which is the one channel a custom VJP has back
  to the caller, and is +inf if a neighbour list overflowed during the backward pass.

Per backward step the reverse-time adjoint costs one force evaluation (rebuilding the step input, which
doubles as the linearisation point) and one force VJP; the observable's VJP is evaluated at the recorded
state itself.  The centre-of-mass projection and box wrapping of the forward step are applied in the
reconstruction too; wrapping is a constant shift and contributes no derivative.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist import space
from dmd_dist.integrators import Dynamics, MDState, leapfrog
from dmd_dist.varying import varying_axes


@dataclasses.dataclass(frozen=True)
class Segment:
    """A leap-frog NVE segment with recording; the static description every strategy shares.

    The step is `integrators.leapfrog`'s: the segment state is an `MDState` holding the half-step
    velocity u_n = v_{n-1/2}.  `record(state, params, context)` sees the state with its integer-time
    velocity v_n (see `records.py` for the channels the commands record).
    """

    dyn: Dynamics
    dt: float
    n_steps: int
    record_every: int
    record: Callable  # record(state: MDState with integer-time velocity, params, context) -> pytree of arrays

    def __post_init__(self):
        if self.n_steps % self.record_every:
            raise ValueError(f"n_steps={self.n_steps} is not a multiple of record_every={self.record_every}")

    @property
    def n_records(self):
        return self.n_steps // self.record_every + 1

    @property
    def integrator(self):
        return leapfrog(self.dyn, self.dt)

    def record_at(self, state, params, context):
        """The record of a half-step state: v_n = P(u_n + dt/2 f_n/m) replaces u_n."""
        return self.record(dataclasses.replace(state, velocity=self.integrator.velocity(state)), params, context)

    def forward(self, params, x0, u0, nbrs0, context, remat_every=None):
        """Records (K+1 leading axis) and the final half-step `MDState`; differentiable by plain autodiff."""
        re = self.record_every
        step = self.integrator.step

        def block(state):
            r = self.record_at(state, params, context)
            state, _ = jax.lax.scan(lambda s, _: (step(s, params), None), state, None, length=re)
            return state, r

        state = MDState(x0, u0, self.dyn.force(params, x0, nbrs0), nbrs0)
        n_blocks = self.n_steps // re
        if remat_every is None:
            state, records = jax.lax.scan(lambda s, _: block(s), state, None, length=n_blocks)
        else:
            group = max(1, remat_every // re)
            if n_blocks % group:
                raise ValueError(f"CheckpointAdjoint(every={remat_every}) must group whole record intervals "
                                 f"evenly: {n_blocks} intervals of {re} steps")

            @jax.checkpoint
            def grouped(s):
                return jax.lax.scan(lambda s, _: block(s), s, None, length=group)

            state, records = jax.lax.scan(lambda s, _: grouped(s), state, None, length=n_blocks // group)
            records = jax.tree.map(lambda a: a.reshape((n_blocks,) + a.shape[2:]), records)
        last = self.record_at(state, params, context)
        records = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), records, last)
        return records, state


class DirectAdjoint:
    """Backpropagate through the scan (stores every step: the exact reference, O(n_steps) memory)."""

    def __call__(self, seg: Segment, params, x0, u0, nbrs0, context, probe):
        records, end = seg.forward(params, x0, u0, nbrs0, context)
        return records, end.position, end.velocity, end.neighbors


@dataclasses.dataclass(frozen=True)
class CheckpointAdjoint:
    """Backpropagate with the scan rematerialised in groups of `every` steps."""

    every: int = 100

    def __call__(self, seg: Segment, params, x0, u0, nbrs0, context, probe):
        records, end = seg.forward(params, x0, u0, nbrs0, context, remat_every=self.every)
        return records, end.position, end.velocity, end.neighbors


class ReverseTimeAdjoint:
    """O(1)-memory gradients by reverse-time reconstruction (see the module docstring)."""

    def __call__(self, seg: Segment, params, x0, u0, nbrs0, context, probe):
        return _reverse_time(seg, params, x0, u0, nbrs0, context, probe)


def _float0_zeros(tree):
    def zero(a):
        a = jnp.asarray(a)
        if jnp.issubdtype(a.dtype, jnp.inexact):
            return jnp.zeros_like(a)
        return np.zeros(a.shape, jax.dtypes.float0)

    return jax.tree.map(zero, tree)


@dataclasses.dataclass(frozen=True, eq=False)
class _Static:
    """Hashable-by-identity holder of the Segment (which holds arrays) for custom_vjp's nondiff slot."""

    seg: Segment


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _reverse_time_core(static, params, x0, u0, nbrs0, context, probe):
    records, end = static.seg.forward(params, x0, u0, nbrs0, context)
    return records, end.position, end.velocity, end.neighbors


def _reverse_time(seg, params, x0, u0, nbrs0, context, probe):
    return _reverse_time_core(_Static(seg), params, x0, u0, nbrs0, context, probe)


def _fwd(static, params, x0, u0, nbrs0, context, probe):
    records, end = static.seg.forward(params, x0, u0, nbrs0, context)
    residuals = (params, end, x0, nbrs0, context, probe)
    return (records, end.position, end.velocity, end.neighbors), residuals


def _bwd(static, residuals, cotangents):
    params, end, x0, nbrs0, context, probe = residuals
    seg = static.seg
    dyn, dt, re = seg.dyn, seg.dt, seg.record_every
    r_bar, x_bar, u_bar, _ = cotangents
    masses = dyn.masses[:, None]
    add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731

    def local(x, u, f, p, ctx, nbrs, with_record):
        """Step n without its force evaluation (f_n is an input): (x_{n+1}, u_{n+1}[, r_n])."""
        u_next = dyn.project(u + dt * f / masses)
        out = (x + dt * u_next, u_next)
        return out + (seg.record_at(MDState(x, u, f, nbrs), p, ctx),) if with_record else out

    def pull(x, u, f, nbrs, f_vjp, a_x, a_u, r_cot, g_p, g_ctx):
        """Apply the VJP of step n at its reconstructed input; accumulate parameter/context cotangents."""
        with_record = r_cot is not None
        _, vjp = jax.vjp(lambda *a: local(*a, nbrs, with_record), x, u, f, params, context)
        a_x, a_u, a_f, gp, gctx = vjp((a_x, a_u) + ((r_cot,) if with_record else ()))
        ax_f, gp_f = f_vjp(a_f)
        return a_x + ax_f, a_u, add(g_p, add(gp, gp_f)), add(g_ctx, gctx)

    # The last record belongs to the final state itself: its VJP needs F's linearisation at x_N.
    x_end, u_end, nbrs_end = end.position, end.velocity, end.neighbors
    _, f_vjp = dyn.force_vjp(params, x_end, nbrs_end)
    _, vjp_last = jax.vjp(lambda x, u, f, p, c: seg.record_at(MDState(x, u, f, nbrs_end), p, c), x_end, u_end,
                          end.force, params, context)
    ax, au, af, g_p, g_ctx = vjp_last(jax.tree.map(lambda a: a[-1], r_bar))
    ax_f, gp_f = f_vjp(af)
    a_x, a_u = x_bar + ax + ax_f, u_bar + au
    g_p = add(g_p, gp_f)

    def back_step(carry, r_cot):
        """From step n+1 back to n: rebuild (x_n, u_n, f_n), then pull the adjoint through step n.  The
        reconstruction is `leapfrog`'s reverse step, written out so that its one force evaluation is also
        the linearisation point of the force VJP."""
        x1, u1, nbrs, a_x, a_u, g_p, g_ctx = carry
        x = dyn.wrap_positions(x1 - dt * u1)
        nbrs = dyn.potential.neighbors.update(nbrs, x)
        f, f_vjp = dyn.force_vjp(params, x, nbrs)
        u = dyn.project(u1 - dt * f / masses)
        a_x, a_u, g_p, g_ctx = pull(x, u, f, nbrs, f_vjp, a_x, a_u, r_cot, g_p, g_ctx)
        return (x, u, nbrs, a_x, a_u, g_p, g_ctx)

    def back_block(carry, r_cot):
        carry, _ = jax.lax.scan(lambda c, _: (back_step(c, None), None), carry, None, length=re - 1)
        return back_step(carry, r_cot), None

    carry = (x_end, u_end, nbrs_end, a_x, a_u, g_p, g_ctx)
    r_blocks = jax.tree.map(lambda a: a[:-1], r_bar)
    carry, _ = jax.lax.scan(back_block, carry, r_blocks, reverse=True)
    x_hat, _, nbrs_hat, a_x, a_u, g_p, g_ctx = carry

    d = x_hat - x0 if dyn.wrap is None or dyn.box is None else space.minimum_image(x_hat - x0, dyn.box)
    err = jnp.max(jnp.abs(d))  # minimum image: wrapping may move atoms by a box
    err = jnp.where(nbrs_hat.overflow, jnp.inf, err)
    # A zero cotangent means a zero gradient, but a trajectory that went non-finite would give 0 * NaN: a
    # segment masked out of the ensemble (its statistics replaced by zeros) must not poison the gradient.
    active = jnp.any(jnp.stack([jnp.any(c != 0) for c in jax.tree.leaves((r_bar, x_bar, u_bar))]))

    def gate(g):
        # A cotangent already summed over a shard_map axis that `active` varies over (parameters not made
        # device-varying, as the trainer makes them) no longer separates the segments: left as it is.
        if not varying_axes(active) <= varying_axes(g):
            return g
        return jnp.where(active, g, jnp.zeros_like(g))

    g_p, a_x, a_u, g_ctx = jax.tree.map(gate, (g_p, a_x, a_u, g_ctx))
    return (g_p, a_x, a_u, _float0_zeros(nbrs0), g_ctx, jnp.broadcast_to(err, jnp.shape(probe)).astype(probe.dtype))


_reverse_time_core.defvjp(_fwd, _bwd)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SegmentResult:
    records: object  # pytree with a leading axis of K+1 records
    position: jax.Array  # final x_N
    velocity: jax.Array  # final integer-time v_N
    neighbors: object  # final neighbour list: check `.overflow` before trusting anything


def run_segment(adjoint, seg: Segment, params, x0, v0, nbrs0, context=None, probe=None):
    """Run `seg` from positions `x0` and integer-time velocities `v0` with gradient strategy `adjoint`.

    Differentiable in params, x0, v0 and context.  `probe` (a float scalar, default 0): differentiate
    with respect to it to receive the reverse-time reconstruction error (0 for the other strategies).
    """
    if probe is None:
        # Derived from x0 so that it varies over a shard_map axis exactly like the state does (its
        # cotangent, the per-replica error, must have the same axis type as the input).
        probe = jnp.zeros_like(jax.lax.stop_gradient(x0[0, 0])) * jax.lax.stop_gradient(x0[0, 0])
    dyn = seg.dyn
    nbrs0 = dyn.potential.neighbors.update(nbrs0, x0)
    f0 = dyn.force(params, x0, nbrs0)
    u0 = dyn.project(v0 - 0.5 * seg.dt * f0 / dyn.masses[:, None])
    records, x, u, nbrs = adjoint(seg, params, x0, u0, nbrs0, context, probe)
    # Outside the custom VJP, so plain autodiff covers the final half kick (one extra force per segment).
    v = seg.integrator.velocity(MDState(x, u, dyn.force(params, x, nbrs), nbrs))
    return SegmentResult(records, x, v, nbrs)
