"""A saved model as a potential: an MPNN (the output of `dmd-dist pretrain`, or of `dmd-dist train`
refining one) for any system of its species, or the refined parameters of a classical `dmd-dist train` run.

`potential.checkpoint` names a pretrain or train run directory (or its checkpoints/ directory); its latest
checkpoint defines the model: for an MPNN the architecture, cutoff, message normalisation and parameters;
for a classical potential its parameters (the config gives the functional form).  Both commands write the
same `model_meta` into every checkpoint, so a refined model is loaded exactly like a pre-trained one (by
`simulate`, by `train` to refine further, by `pretrain` to fit again).
"""

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist import checkpoint, space
from dmd_dist.errors import InputError
from dmd_dist.neighbors import choose_neighbors
from dmd_dist.potentials.mpnn import MPNNPotential, resolve_hyper

KIND = "dmd-dist pretrain"  # the `kind` in the meta of every pretrain checkpoint
MODEL_KINDS = (KIND, "dmd-dist train")  # the commands whose checkpoints can hold an MPNN


def model_meta(potential, pcfg, system):
    """What defines a saved model besides its parameters, for a checkpoint's meta: the potential's kind and
    species, and for an MPNN its architecture and preset."""
    meta = {"potential_kind": pcfg.kind, "species_names": list(system.topology.species_names)}
    if not isinstance(potential, MPNNPotential):
        return meta
    hyper = dataclasses.asdict(potential.hyper)
    hyper["hidden"] = list(hyper["hidden"])
    return meta | {"preset": pcfg.preset, "hyper": hyper}


def checkpoint_dir(path):
    """A run directory or its checkpoints/ directory -> the checkpoints directory."""
    p = Path(path)
    return p / "checkpoints" if (p / "checkpoints").is_dir() else p


def saved_meta(path, key="potential.checkpoint"):
    """The JSON meta of the latest checkpoint of a pretrain or train run (kind, species, step, ...)."""
    step, meta = None, None
    try:
        step, meta = checkpoint.latest_meta(checkpoint_dir(path))
    except Exception as e:
        raise InputError(key, f"cannot read checkpoints in {path}: {type(e).__name__}: {e}") from None
    if step is None or not isinstance(meta, dict) or meta.get("kind") not in MODEL_KINDS:
        raise InputError(key, f"{path} holds no dmd-dist pretrain or train checkpoint")
    return meta | {"step": step}


def pretrained_meta(path, key="potential.checkpoint"):
    """The JSON meta of the latest checkpoint of a pretrain or train run of an MPNN (architecture, species,
    step, ...)."""
    meta = saved_meta(path, key)
    if "hyper" not in meta:
        raise InputError(key, f"{path} holds a {meta['kind'].removeprefix('dmd-dist ')} run of a classical "
                              f"potential ({meta.get('potential_kind', 'kind not recorded')}), not an MPNN")
    return meta


def load_pretrained(path, key="potential.checkpoint", meta=None):
    """The parameters (a nested dict of numpy arrays) of the latest checkpoint of a pretrain or train run;
    `path` is the run directory or its checkpoints/ directory."""
    ckpt = checkpoint_dir(path)
    meta = pretrained_meta(ckpt, key) if meta is None else meta
    try:
        state = checkpoint.restore_arrays(ckpt, meta["step"])
    except Exception as e:  # e.g. an older layout (params beside the meta, not under "state"): pretrain again
        raise InputError(key, f"cannot read the parameters in {ckpt}: {type(e).__name__}: {e}") from None
    return jax.tree.map(np.asarray, state["params"])


def pretrained_potential(system, pcfg, key="potential.checkpoint"):
    """(MPNNPotential, params) for `system` from the saved model at `pcfg.checkpoint`.

    The checkpoint defines the model: its architecture, cutoff and message normalisation are used (the
    config's `preset` and `cutoff` must agree); species are matched by name, so the system may list them in
    another order or use a subset; parameters are cast to the system's precision.
    """
    meta = pretrained_meta(pcfg.checkpoint, key)
    hyper = resolve_hyper(meta["hyper"])
    if pcfg.preset != meta["preset"]:
        raise InputError("potential.preset", f"{pcfg.preset!r} differs from the pre-trained model's "
                                             f"{meta['preset']!r} ({pcfg.checkpoint})")
    if not math.isclose(pcfg.cutoff, hyper.cutoff, rel_tol=1e-12):
        raise InputError("potential.cutoff", f"{pcfg.cutoff} nm differs from the pre-trained model's "
                                             f"{hyper.cutoff} nm ({pcfg.checkpoint})")
    names, saved = list(system.topology.species_names), list(meta["species_names"])
    unknown = [s for s in names if s not in saved]
    if unknown:
        raise InputError(key, f"the system has species {unknown} the pre-trained model never saw ({saved})")
    rows = np.array([saved.index(s) for s in names])
    params = load_pretrained(pcfg.checkpoint, key)
    params["offset"] = params["offset"][rows]
    params["representation"]["embed"]["embedding"] = params["representation"]["embed"]["embedding"][rows]
    neighbors = choose_neighbors(system, hyper.cutoff, pcfg.skin, pcfg.neighbor_list, pcfg.capacity_factor)
    dtype = system.positions.dtype
    pot = MPNNPotential(space.periodic(system.box), neighbors, system.topology.species, len(names), hyper,
                        jax.random.PRNGKey(pcfg.init_seed), dtype)
    template = pot.default_params()
    if not _same_layout(template, params):
        raise InputError(key, "the checkpoint's parameters do not fit its recorded architecture")
    return pot, jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


def saved_classical_params(pcfg, template, species_names, key="potential.checkpoint"):
    """The refined parameters at `pcfg.checkpoint` (a train run of a classical potential of kind `pcfg.kind`
    and the same species), in the layout and dtype of `template` (the config's own parameters)."""
    meta = saved_meta(pcfg.checkpoint, key)
    kind = meta.get("potential_kind", "mpnn" if "hyper" in meta else None)
    if kind is not None and kind != pcfg.kind:
        raise InputError(key, f"{pcfg.checkpoint} holds a model of potential.kind = {kind!r}, "
                              f"not {pcfg.kind!r}")
    saved = meta.get("species_names")
    if saved is not None and list(saved) != list(species_names):
        raise InputError(key, f"{pcfg.checkpoint} was refined for species {saved}, the system has "
                              f"{list(species_names)}")
    params = load_pretrained(pcfg.checkpoint, key, meta)
    if not _same_layout(template, params):
        raise InputError(key, f"the parameters in {pcfg.checkpoint} do not fit potential.kind = {pcfg.kind!r} "
                              "with this config")
    return jax.tree.map(lambda t, a: jnp.asarray(a, jnp.asarray(t).dtype), template, params)


def _same_layout(template, params):
    """Do two parameter trees have the same structure and leaf shapes?"""
    return jax.tree.structure(template) == jax.tree.structure(params) and all(
        np.shape(a) == np.shape(b) for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(params)))
