"""The optimizer of `[optimizer]`: Adam (or SGD) with a learning rate and an update clip per parameter
group, the paper's scheme, skipping non-finite updates.

A group is a parameter's dotted path ("lj.sigma", "coulomb.charge", "mpnn.blocks.0.filter.kernel");
a `learning_rate`/`clip` table is matched by the longest key that equals the path or one of its
prefixes ("lj" covers "lj.sigma" and "lj.epsilon"), with `default` for the rest.  A learning rate of 0
freezes a group (refine only the force constants of a water model, say).  `learning_rate_half_life`
halves every rate every that many updates (one update per training iteration), so that a stochastic
refinement settles instead of jittering around its answer at the full step size.
"""

import jax
import optax

from dmd_dist.errors import InputError
from dmd_dist.params import leaf_paths


def _lookup(table, path, key):
    if not isinstance(table, dict):
        return table
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in table:
            return table[prefix]
    if "default" in table:
        return table["default"]
    raise InputError(key, f"no entry for parameter {path!r} (give it, a prefix of it, or `default`)")


def check_tables(ocfg, params):
    """Every key of a per-group table must name a parameter path or prefix (catches typos)."""
    paths = leaf_paths(params)
    for key, table in (("optimizer.learning_rate", ocfg.learning_rate), ("optimizer.clip", ocfg.clip)):
        if isinstance(table, dict):
            for name in table:
                if name != "default" and not any(p == name or p.startswith(name + ".") for p in paths):
                    raise InputError(f"{key}.{name}", f"no such parameter; parameters are {sorted(set(paths))}")


def learning_rate_schedule(rate, half_life=None):
    """The learning rate of update `count` (0 for the first): `rate`, halved every `half_life` updates.
    Always a schedule, so that the optimizer state (which then counts the updates) has the same structure
    with and without decay: a resume may switch it on."""
    if half_life is None:
        return lambda count: rate
    return lambda count: rate * 0.5 ** (count / half_life)


def make_optimizer(ocfg, params):
    """optax transformation for the config; its state does not depend on the learning rates or their
    half-life (which may therefore change on resume)."""
    check_tables(ocfg, params)
    paths = leaf_paths(params)
    labels = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), paths)
    groups = {}
    for path in paths:
        lr = _lookup(ocfg.learning_rate, path, "optimizer.learning_rate")
        clip = _lookup(ocfg.clip, path, "optimizer.clip") if ocfg.clip is not None else None
        rate = learning_rate_schedule(lr, ocfg.learning_rate_half_life)
        base = optax.adam(rate) if ocfg.name == "adam" else optax.sgd(rate)
        groups[path] = optax.chain(base, optax.clip(clip)) if clip is not None else base
    return optax.apply_if_finite(optax.multi_transform(groups, labels), max_consecutive_errors=5)
