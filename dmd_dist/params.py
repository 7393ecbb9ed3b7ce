"""Naming parameters: flatten a parameter pytree to {"lj.sigma": 0.34, "coulomb.charge[O]": -0.82, ...}.

Used by gradcheck, metrics and reports; per-species arrays are labelled with the species names, other
per-type arrays with their index, and one-element arrays by the bare name.
"""

import jax
import numpy as np


def path_name(path):
    """A pytree key path as a dotted name: "lj.sigma", "representation.interactions.0.filter.layers.0.kernel"."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def leaf_paths(params):
    """The dotted name of every leaf of `params`, in leaf order (the optimizer's parameter groups)."""
    return [path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def flat_names(params, species_names=()):
    """Ordered (name, path, flat index) for every scalar in `params`."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        base = path_name(path)
        arr = np.asarray(leaf)
        if arr.size == 1:
            out.append((base, path, 0))
            continue
        labels = species_names if len(species_names) == arr.size else [str(i) for i in range(arr.size)]
        out += [(f"{base}[{label}]", path, i) for i, label in enumerate(labels)]
    return out


def flatten(params, species_names=()):
    """{name: float} for every scalar in `params`."""
    leaves = {p: np.asarray(leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    return {name: float(leaves[path].reshape(-1)[i]) for name, path, i in flat_names(params, species_names)}


def assign(params, values, species_names=()):
    """A copy of `params` with the scalars named in `values` ({name: float}) set; KeyError(name) for a name
    that is not one of `flat_names`."""
    names = {n: (path, i) for n, path, i in flat_names(params, species_names)}
    by_path = {}
    for name, value in values.items():
        if name not in names:
            raise KeyError(name)
        path, i = names[name]
        by_path.setdefault(path, []).append((i, value))

    def put(path, leaf):
        for i, value in by_path.get(path, ()):
            leaf = leaf.at[np.unravel_index(i, leaf.shape)].set(value)
        return leaf
    return jax.tree_util.tree_map_with_path(put, params)


def perturb(params, name, delta, species_names=()):
    """A copy of `params` with the scalar called `name` moved by `delta`."""
    for n, path, i in flat_names(params, species_names):
        if n == name:
            def bump(p, leaf):
                return leaf.at[np.unravel_index(i, leaf.shape)].add(delta) if p == path else leaf
            return jax.tree_util.tree_map_with_path(bump, params)
    raise KeyError(name)
