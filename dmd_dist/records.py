"""What NVE windows record: named channels, each defined once, used differentiably by training and as
numbers by `simulate`.

A record is evaluated every `record_every` steps of a window (`adjoint.Segment`) on the engine's state
(positions, integer-time velocities, forces, neighbour list) and on the window's start frame, which
arrives as the segment's `context`: a dict with the frame's "position" and/or "velocity", only what the
channels need (the context is differentiated too, so it carries nothing else).

Channels (per window, one value per record; units nm, ps, amu, kJ/mol, e):

- "vacf": (1/N) sum_i v_i(0) . v_i(t), the velocity autocorrelation from the frame (the paper's
  estimator; a bidirectional window's backward half gives t < 0);
- "msd": (1/N) sum_i |x_i(t) - x_i(0)|^2 from the frame (unwrapped positions only);
- "dipole": total dipole of the potential's dipole model (`potentials.dipole.WithDipole`: fixed or
  learned charges, molecules made whole), e nm;
- "pe", "ke": potential and kinetic energy (kJ/mol);
- "pressure": pressure tensor from the virial and the velocities (kJ/mol/nm^3).
"""

import jax.numpy as jnp

from dmd_dist.integrators import kinetic_energy
from dmd_dist.observables.transport import pressure_tensor

CHANNELS = ("vacf", "msd", "dipole", "pe", "ke", "pressure")
_FRAME_NEEDS = {"vacf": "velocity", "msd": "position"}


def frame_context(channels, position, velocity):
    """The part of a start frame (x0, v0) the channels read: the window's `context`."""
    frame = {"position": position, "velocity": velocity}
    return {need: frame[need] for c, need in _FRAME_NEEDS.items() if c in channels}


def has_dipole(potential):
    """Whether the potential carries a dipole model (so that windows can record the "dipole" channel)."""
    return hasattr(potential, "dipole")


def recorder(channels, system, potential):
    """record(state, params, frame) -> {channel: value} for the given channels (see module docstring)."""
    unknown = set(channels) - set(CHANNELS)
    if unknown:
        raise ValueError(f"unknown record channels {sorted(unknown)} (known: {', '.join(CHANNELS)})")
    if "dipole" in channels and not has_dipole(potential):
        raise ValueError("the dipole channel needs a potential with a dipole model (potentials.dipole.WithDipole)")
    channels = tuple(c for c in CHANNELS if c in channels)
    masses = system.masses

    def record(state, params, frame):
        x, v = state.position, state.velocity
        out = {}
        for c in channels:
            if c == "vacf":
                out[c] = jnp.mean(jnp.sum(v * frame["velocity"], axis=-1))
            elif c == "msd":
                out[c] = jnp.mean(jnp.sum((x - frame["position"]) ** 2, axis=-1))
            elif c == "dipole":
                out[c] = potential.dipole(params, x, state.neighbors)
            elif c == "pe":
                out[c] = potential.energy(params, x, state.neighbors)
            elif c == "ke":
                out[c] = kinetic_energy(v, masses)
            elif c == "pressure":
                out[c] = pressure_tensor(potential.virial(params, x, state.neighbors), v, masses, system.volume)
        return out

    return record
