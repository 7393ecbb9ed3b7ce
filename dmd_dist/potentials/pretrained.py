"""A saved model as a potential: an MPNN (the output of `dmd-dist pretrain`, or of `dmd-dist train`
refining one) for any system of its species, or the refined parameters of a classical `dmd-dist train` run.

`potential.checkpoint` names a pretrain or train run directory (or its checkpoints/ directory); its latest
checkpoint defines the model: for an MPNN the architecture, cutoff, message normalisation, core repulsion
(potentials/core.py) and parameters; for a classical potential its parameters (the config gives the
functional form).  Both commands write the same `model_meta` into every checkpoint, so a refined model is
loaded exactly like a pre-trained one (by `simulate`, by `train` to refine further, by `pretrain` to fit
again).
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
from dmd_dist.potentials.core import CoreRepulsion
from dmd_dist.potentials.dipole import DIPOLE_KEY, LearnedDipole, learned_dipole
from dmd_dist.potentials.mpnn import MPNNPotential, resolve_hyper
from dmd_dist.potentials.species import per_species

KIND = "dmd-dist pretrain"  # the `kind` in the meta of every pretrain checkpoint
MODEL_KINDS = (KIND, "dmd-dist train")  # the commands whose checkpoints can hold an MPNN


def model_meta(potential, pcfg, system, dcfg=None):
    """What defines a saved model besides its parameters, for a checkpoint's meta: the potential's kind and
    species, for an MPNN its architecture, preset and core repulsion, and for a learned dipole model
    (`dcfg` its [dipole] section) the same under "dipole"."""
    meta = {"potential_kind": pcfg.kind, "species_names": list(system.topology.species_names)}
    model = getattr(potential, "model", None)
    if isinstance(model, LearnedDipole):
        meta["dipole"] = {"preset": dcfg.preset, "hyper": _hyper_dict(model.hyper),
                          "atomic_dipoles": model.atomic_dipoles, "charges": model.species_charges}
    potential = getattr(potential, "base", potential)
    if isinstance(potential, MPNNPotential):
        meta |= {"preset": pcfg.preset, "hyper": _hyper_dict(potential.hyper)}
        if potential.core is not None:
            meta["core"] = potential.core.to_meta(meta["species_names"])
    return meta


def _hyper_dict(hyper):
    d = dataclasses.asdict(hyper)
    d["hidden"] = list(d["hidden"])
    return d


def checkpoint_dir(path):
    """A run directory or its checkpoints/ directory -> the checkpoints directory."""
    p = Path(path)
    return p / "checkpoints" if (p / "checkpoints").is_dir() else p


def saved_meta(path, key="potential.checkpoint", potential=True):
    """The JSON meta of the latest checkpoint of a pretrain or train run (kind, species, step, ...);
    `potential`: it must hold a potential (not a dipole model alone)."""
    step, meta = None, None
    try:
        step, meta = checkpoint.latest_meta(checkpoint_dir(path))
    except Exception as e:
        raise InputError(key, f"cannot read checkpoints in {path}: {type(e).__name__}: {e}") from None
    if step is None or not isinstance(meta, dict) or meta.get("kind") not in MODEL_KINDS:
        raise InputError(key, f"{path} holds no dmd-dist pretrain or train checkpoint")
    if potential and meta.get("target") == "dipole":
        raise InputError(key, f"{path} holds a pre-trained dipole model, not a potential (use it as "
                              "dipole.checkpoint)")
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
    """The potential's parameters (a nested dict of numpy arrays) of the latest checkpoint of a pretrain or
    train run; `path` is the run directory or its checkpoints/ directory."""
    meta = pretrained_meta(path, key) if meta is None else meta
    params = _saved_params(path, key, meta)
    params.pop(DIPOLE_KEY, None)  # a learned dipole trained with the potential: dipole.checkpoint loads it
    return params


def _saved_params(path, key, meta):
    ckpt = checkpoint_dir(path)
    try:
        state = checkpoint.restore_arrays(ckpt, meta["step"])
    except Exception as e:  # e.g. an older layout (params beside the meta, not under "state"): pretrain again
        raise InputError(key, f"cannot read the parameters in {ckpt}: {type(e).__name__}: {e}") from None
    return jax.tree.map(np.asarray, state["params"])


def saved_dipole(system, dcfg, neighbors, key="dipole.checkpoint"):
    """(LearnedDipole, params) of the learned dipole model saved at `dcfg.checkpoint` (a pretrain run with
    target "dipole", or a train run that refined one) for `system`, on the list `neighbors`.  The checkpoint
    defines the model (architecture, cutoff, normalisation, reference charges); species are matched by name."""
    meta = saved_meta(dcfg.checkpoint, key, potential=False)
    saved = meta.get("dipole")
    if saved is None:
        raise InputError(key, f"{dcfg.checkpoint} holds no learned dipole model")
    hyper = resolve_hyper(saved["hyper"])
    if dcfg.preset != saved["preset"]:
        raise InputError("dipole.preset", f"{dcfg.preset!r} differs from the saved model's {saved['preset']!r} "
                                          f"({dcfg.checkpoint})")
    if dcfg.cutoff is not None and not math.isclose(dcfg.cutoff, hyper.cutoff, rel_tol=1e-12):
        raise InputError("dipole.cutoff", f"{dcfg.cutoff} nm differs from the saved model's {hyper.cutoff} nm")
    if dcfg.atomic_dipoles != saved["atomic_dipoles"]:
        raise InputError("dipole.atomic_dipoles", f"the saved model has atomic_dipoles = "
                                                   f"{str(saved['atomic_dipoles']).lower()}")
    rows = _species_rows(system, meta, key)
    charges = {name: saved["charges"][name] for name in system.topology.species_names}
    if dcfg.charges is not None and not np.allclose(per_species(dcfg.charges, system, "dipole.charges"),
                                                    list(charges.values()), rtol=1e-12, atol=0):
        raise InputError("dipole.charges", f"differ from the saved model's reference charges {charges}")
    params = _saved_params(dcfg.checkpoint, key, meta)[DIPOLE_KEY]
    params["representation"]["embed"]["embedding"] = params["representation"]["embed"]["embedding"][rows]
    model, template = learned_dipole(system, reference_charges=charges, atomic_dipoles=saved["atomic_dipoles"],
                                     neighbors=neighbors, hyper=hyper, initialise=False)
    if not _same_layout(template, params):
        raise InputError(key, "the checkpoint's dipole parameters do not fit its recorded architecture")
    return model, jax.tree.map(lambda t, a: jnp.asarray(a, t.dtype), template, params)


def _species_rows(system, meta, key):
    """Rows of the saved per-species arrays for the system's species (matched by name)."""
    names, saved = list(system.topology.species_names), list(meta["species_names"])
    unknown = [s for s in names if s not in saved]
    if unknown:
        raise InputError(key, f"the system has species {unknown} the saved model never saw ({saved})")
    return np.array([saved.index(s) for s in names])


def pretrained_potential(system, pcfg, key="potential.checkpoint"):
    """(MPNNPotential, params) for `system` from the saved model at `pcfg.checkpoint`.

    The checkpoint defines the model: its architecture, cutoff, message normalisation and core repulsion (the
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
    names = list(system.topology.species_names)
    rows = _species_rows(system, meta, key)
    params = load_pretrained(pcfg.checkpoint, key, meta)
    params["offset"] = params["offset"][rows]
    params["representation"]["embed"]["embedding"] = params["representation"]["embed"]["embedding"][rows]
    neighbors = choose_neighbors(system, hyper.cutoff, pcfg.skin, pcfg.neighbor_list, pcfg.capacity_factor)
    dtype = system.positions.dtype
    core = CoreRepulsion.from_meta(meta["core"], names) if "core" in meta else None
    pot = MPNNPotential(space.periodic(system.box), neighbors, system.topology.species, len(names), hyper,
                        dtype=dtype, initialise=False, core=core)  # no key: the checkpoint's parameters
    template = pot.default_params()  # shapes only
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
