"""Per-species parameters: how a config's scalar-or-mapping value becomes one value per species."""

import numpy as np

from dmd_dist.errors import InputError


def per_species(value, system, key, default=None):
    """A scalar, or a mapping species name -> value, as an array in the system's species order; `key`
    names the config key in errors (unknown or missing species)."""
    names = system.topology.species_names
    if isinstance(value, dict):
        unknown = set(value) - set(names)
        if unknown:
            raise InputError(key, f"unknown species {sorted(unknown)}; the system has {list(names)}")
        missing = [s for s in names if s not in value and default is None]
        if missing:
            raise InputError(key, f"no value for species {missing}")
        return np.array([float(value.get(s, default)) for s in names])
    return np.full(len(names), float(value))
