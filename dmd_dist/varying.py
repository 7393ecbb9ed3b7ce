"""Which shard_map axes a value varies over (its type under `check_vma`), and the two conversions that
hand-written VJPs need where autodiff would insert them implicitly."""

import jax


def varying_axes(x):
    """The shard_map axes a value varies over (empty outside shard_map)."""
    return jax.typeof(x).mat.varying


def varying_like(tree, x):
    """`tree` made to vary over the shard_map axes that `x` varies over, as autodiff does implicitly when a
    replicated value meets a per-replica one."""
    def vary(a):
        axes = tuple(varying_axes(x) - varying_axes(a))
        return jax.lax.pcast(a, axes, to="varying") if axes else a

    return jax.tree.map(vary, tree)


def cotangent_like(g, p):
    """g as autodiff returns the cotangent of p: in p's dtype and summed over the shard_map axes that g
    varies over and p does not (parameters shared by the replicas)."""
    shared = tuple(varying_axes(g) - varying_axes(p))
    return (jax.lax.psum(g, shared) if shared else g).astype(p.dtype)
