"""MD throughput of dmd_dist against JAX MD on the same Lennard-Jones liquid (argon).

Both engines integrate the same system from the same state with velocity Verlet in NVE: same box, LJ
sigma/epsilon, plain cutoff, skin (= JAX MD's dr_threshold), dt and precision, each jitted as one
`lax.scan` over the same number of steps with its neighbour list updated inside the scan.  Compilation
is excluded (one warm-up call), the time is the best of several repeats, and the total-energy change over
the timed run is reported for each engine so that a faster but wrong integration would show.  JAX MD is
measured with its Dense and its OrderedSparse (default) neighbour-list formats; the speedup is against
the faster of the two.  See docs/md_throughput.md.

    python benchmarks/md_throughput.py [--quick] [--precision float64|float32] [--sizes 256,512,1024,2048]

Prints one JSON object on stdout; progress goes to stderr.
"""

import argparse
import dataclasses
import importlib.metadata
import json
import math
import sys
import time
import warnings
from typing import Callable

import devices  # benchmarks/devices.py


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, few steps (< 1 min)")
    ap.add_argument("--precision", choices=("float64", "float32"), default="float64")
    ap.add_argument("--sizes", default=None, help="comma-separated atom counts (default 256,512,1024,2048)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps at 256 atoms (scaled as 1/N above)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per engine (best is reported)")
    ap.add_argument("--equilibration", type=int, default=None, help="Langevin steps before timing")
    devices.add_argument(ap)
    args = ap.parse_args()
    devices.select(args.device)
    return args


ARGS = parse_args()

import jax  # noqa: E402

# Must happen before any array is created: it fixes the default float type for both engines.
jax.config.update("jax_enable_x64", ARGS.precision == "float64")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# JAX MD 0.2.29's neighbour-list pruning scatters int64 into int32 under x64: harmless, but noisy.
warnings.filterwarnings("ignore", message="scatter inputs have incompatible types", category=FutureWarning)

from jax_md import energy as md_energy  # noqa: E402
from jax_md import partition, quantity, simulate  # noqa: E402
from jax_md import space as md_space  # noqa: E402

from dmd_dist import integrators, potentials, systems  # noqa: E402
from dmd_dist.driver import scan_steps  # noqa: E402

# Liquid argon near its triple point (Rahman 1964): the usual LJ benchmark state.
SIGMA, EPSILON = 0.3405, 0.9960  # nm, kJ/mol
TEMPERATURE, DENSITY = 94.4, 1.374  # K, g/cm^3
CUTOFF, SKIN, DT = 1.0, 0.1, 0.002  # nm, nm, ps
CAPACITY_FACTOR = 1.25  # both engines size their lists at 1.25x the largest count seen at allocation
# JAX MD always multiplies LJ by a C1 switch from r_onset to r_cutoff; squeezing it into the last 0.1% of
# the cutoff makes it a plain truncation like ours (it only touches pairs in a 1 pm shell).
ONSET_FRACTION = 0.999
MAX_REALLOCATIONS = 8


def log(*a):
    print(*a, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Case:
    """One engine, ready to time: `run(start)` is jitted, compiled and known not to overflow."""

    name: str
    run: Callable
    start: object
    first_call_seconds: float
    report: Callable  # (final state) -> dict of everything but the timing
    times: list = dataclasses.field(default_factory=list)
    final: object = None


def timed(run, state):
    t0 = time.perf_counter()
    out = jax.block_until_ready(run(state))
    return out, time.perf_counter() - t0


def prepare_system(n_atoms, key, equilibration_steps):
    """Liquid argon melted from a lattice; cutoff reduced (for both engines) only if the box is too small."""
    s = systems.lattice_fluid(n_atoms, TEMPERATURE, key, density=DENSITY)
    half_box = 0.5 * float(np.min(np.asarray(s.box)))
    # Minimum image needs cutoff + skin <= half box; keep the skin (it sets the rebuild rate) and shrink
    # the cutoff to the nearest 0.01 nm below the limit.
    cutoff = CUTOFF if CUTOFF + SKIN <= half_box else math.floor((half_box - SKIN) * 100) / 100
    pot, params = potentials.lennard_jones_potential(s, SIGMA, EPSILON, cutoff, skin=SKIN, neighbor_mode="list",
                                                     capacity_factor=CAPACITY_FACTOR)
    if equilibration_steps:
        s = systems.equilibrate(s, pot, params, TEMPERATURE, key, steps=equilibration_steps, dt=DT)
    box = jnp.asarray(s.box)
    # Shared initial state.  Wrapped into the box because JAX MD's cell list requires it (ours does not
    # care), and with zero total momentum because our integrator projects it out at init and JAX MD does
    # not: otherwise the two would start from different velocities.
    x = s.positions - box * jnp.floor(s.positions / box)
    m = s.masses[:, None]
    v = s.velocities - jnp.sum(m * s.velocities, axis=0) / jnp.sum(m)
    return s, pot, params, cutoff, x, v


def setup_ours(s, pot, params, cutoff, x, v, n_steps):
    dyn = integrators.Dynamics(pot, s.masses)
    vv = integrators.velocity_verlet(dyn, DT)
    run = jax.jit(lambda st: scan_steps(vv.step, params, st, n_steps)[0])
    capacity = None
    # Overflow protocol (driver.run_checked's rule, by hand to keep the timed call bare): a run that needed
    # more slots than allocated is discarded and re-done with a larger list from the same start.  The
    # first call compiles, so it doubles as the warm-up.
    for _ in range(MAX_REALLOCATIONS):
        start = vv.init(params, x, v, pot.neighbors.allocate(x, capacity=capacity))
        out, first = timed(run, start)
        if not bool(out.neighbors.overflow):
            break
        capacity = int(math.ceil(int(out.neighbors.max_count) * CAPACITY_FACTOR))
        log(f"  dmd_dist: overflow, re-allocating with capacity {capacity}")
    else:
        raise RuntimeError("dmd_dist neighbour list keeps overflowing")

    # Forces cut off plainly at rc are exactly -grad of the *shifted* potential phi(r) - phi(rc): that is
    # the energy the dynamics conserves.  The unshifted energy also jumps by phi(rc) whenever a pair
    # crosses rc (no force impulse pays for it), so it fluctuates with the number of pairs inside rc.
    shifted, _ = potentials.lennard_jones_potential(s, SIGMA, EPSILON, cutoff, skin=SKIN, neighbor_mode="list",
                                                    shift=True)

    def total_energy(st, p=pot):
        return float(p.energy(params, st.position, st.neighbors) + integrators.kinetic_energy(st.velocity, s.masses))

    def report(out):
        assert not bool(out.neighbors.overflow), "dmd_dist neighbour list overflowed during the timed run"
        e0, e1 = total_energy(start), total_energy(out)
        c0, c1 = total_energy(start, shifted), total_energy(out, shifted)
        return {
            "neighbor_format": "full list (N, capacity), rebuilt by sorting the in-range indices of each row of the (N, N) distance mask",
            "neighbor_idx_shape": list(start.neighbors.idx.shape),
            "capacity_per_atom": int(start.neighbors.capacity),
            "max_neighbors_seen": int(out.neighbors.max_count),
            "rebuilds": int(out.neighbors.rebuilds),
            "initial_energy_per_atom": e0 / s.n_atoms,
            "energy_drift_per_atom": abs(c1 - c0) / s.n_atoms,
            "energy_drift_per_atom_unshifted": abs(e1 - e0) / s.n_atoms,
        }

    return Case("dmd_dist", run, start, first, report), start.force


def force_agreement(x, box, cutoff, force, reference):
    """Same-system check on the shared initial state: JAX MD's forces against ours.

    They can differ only on atoms with a partner in JAX MD's switching shell [r_onset, r_cutoff) (there
    its switch adds a steep, short force); everywhere else they must agree to rounding, and any mismatch
    of box, units or parameters would show as an O(1) difference.
    """
    x, box = np.asarray(x, np.float64), np.asarray(box, np.float64)
    d = x[:, None, :] - x[None, :, :]
    r = np.linalg.norm(d - box * np.round(d / box), axis=-1)
    in_shell = np.any((r >= ONSET_FRACTION * cutoff) & (r < cutoff), axis=1)
    diff = np.linalg.norm(np.asarray(force) - np.asarray(reference), axis=-1)
    scale = np.sqrt(np.mean(np.sum(np.asarray(reference) ** 2, axis=-1)))
    return {
        "force_check_atoms_in_switch_shell": int(in_shell.sum()),
        "force_max_rel_diff_elsewhere": float(np.max(diff[~in_shell], initial=0.0) / scale),
        "force_rms_rel_diff_all": float(np.sqrt(np.mean(diff**2)) / scale),
    }


def setup_jax_md(s, cutoff, x, v, n_steps, fmt, reference_force):
    box = jnp.asarray(s.box)
    displacement, shift = md_space.periodic(box)
    # JAX MD takes r_onset/r_cutoff in units of sigma.
    neighbor_fn, energy_fn = md_energy.lennard_jones_neighbor_list(
        displacement, box, sigma=SIGMA, epsilon=EPSILON, r_onset=ONSET_FRACTION * cutoff / SIGMA,
        r_cutoff=cutoff / SIGMA, dr_threshold=SKIN, format=fmt, capacity_multiplier=CAPACITY_FACTOR)
    init_fn, apply_fn = simulate.nve(energy_fn, shift, DT)
    momenta = s.masses[:, None] * v

    def run(carry):
        # JAX MD's documented loop: step with the current list, then update it at the new positions.
        # The rebuild counter (O(N) per step) mirrors the one our list carries.
        def body(c, _):
            st, nbrs, count = c
            st = apply_fn(st, neighbor=nbrs)
            new = nbrs.update(st.position)
            count = count + jnp.any(new.reference_position != nbrs.reference_position).astype(jnp.int32)
            return (st, new, count), None

        return jax.lax.scan(body, carry, None, length=n_steps)[0]

    run = jax.jit(run)
    extra = 0
    for _ in range(MAX_REALLOCATIONS):
        nbrs = neighbor_fn.allocate(x, extra_capacity=extra)
        state = init_fn(jax.random.PRNGKey(0), x, 0.0, mass=s.masses, momenta=momenta, neighbor=nbrs)
        start = (state, nbrs, jnp.zeros((), jnp.int32))
        out, first = timed(run, start)  # compiles: the warm-up
        if not bool(out[1].did_buffer_overflow):
            break
        # JAX MD's rule: discard the run, re-allocate with more room (extra_capacity is per atom for both
        # formats; the sparse list multiplies it by N), try again.
        extra += max(1, int(nbrs.max_occupancy) // (4 if fmt is partition.Dense else 4 * s.n_atoms))
        log(f"  jax-md {fmt.name}: overflow, re-allocating with extra_capacity {extra}")
    else:
        raise RuntimeError(f"JAX MD {fmt.name} neighbour list keeps overflowing")

    def total_energy(st, nb):
        return float(energy_fn(st.position, neighbor=nb) + quantity.kinetic_energy(momentum=st.momentum, mass=st.mass))

    def report(out):
        st1, nbrs1, rebuilds = out
        assert not bool(nbrs1.did_buffer_overflow), "JAX MD neighbour list overflowed during the timed run"
        e0, e1 = total_energy(state, nbrs), total_energy(st1, nbrs1)
        return {
            "neighbor_format": fmt.name + (" (pairs, half list)" if fmt is partition.OrderedSparse else
                                           " (N, capacity), full list"),
            "neighbor_idx_shape": list(nbrs.idx.shape),
            "capacity_total" if fmt is not partition.Dense else "capacity_per_atom": int(nbrs.max_occupancy),
            "cell_list": nbrs.cell_list_fn is not None,
            "rebuilds": int(rebuilds),
            "initial_energy_per_atom": e0 / s.n_atoms,
            "energy_drift_per_atom": abs(e1 - e0) / s.n_atoms,
            **force_agreement(x, box, cutoff, state.force, reference_force),
        }

    return Case(f"jax_md_{fmt.name}", run, start, first, report)


def bench_size(n, key, n_steps, equilibration, repeats):
    log(f"[{n} atoms] equilibrating ({equilibration} Langevin steps)")
    s, pot, params, cutoff, x, v = prepare_system(n, key, equilibration)
    log(f"[{n} atoms] box {float(s.box[0]):.3f} nm, cutoff {cutoff} nm, {n_steps} steps, compiling")
    ours, force0 = setup_ours(s, pot, params, cutoff, x, v, n_steps)
    cases = [ours] + [setup_jax_md(s, cutoff, x, v, n_steps, fmt, force0)
                      for fmt in (partition.Dense, partition.OrderedSparse)]
    # Repeats interleave the engines, so a slow spell of the (shared, 2-core) machine hits all of them
    # rather than one; every repeat starts from the same state and does identical work.
    for _ in range(repeats):
        for c in cases:
            c.final, t = timed(c.run, c.start)
            c.times.append(t)
    rows = {}
    for c in cases:
        best = min(c.times)
        rows[c.name] = {"steps_per_second": n_steps / best, "seconds_best": best, "seconds_all": c.times,
                        "first_call_seconds": c.first_call_seconds, **c.report(c.final)}
        log(f"  {c.name:22s} {rows[c.name]['steps_per_second']:9.1f} steps/s  rebuilds {rows[c.name]['rebuilds']}"
            f"  |dE|/N {rows[c.name]['energy_drift_per_atom']:.1e} kJ/mol")
    theirs = {c.name.removeprefix("jax_md_"): rows[c.name] for c in cases[1:]}
    fastest = max(theirs, key=lambda k: theirs[k]["steps_per_second"])
    return {
        "n_atoms": n,
        "box_nm": float(s.box[0]),
        "cutoff_nm": cutoff,
        "skin_nm": SKIN,
        "dt_ps": DT,
        "steps_timed": n_steps,
        "dmd_dist": rows["dmd_dist"],
        "jax_md": theirs,
        "jax_md_fastest_format": fastest,
        "speedup_vs_jax_md": rows["dmd_dist"]["steps_per_second"] / theirs[fastest]["steps_per_second"],
    }


def main():
    sizes = [int(n) for n in ARGS.sizes.split(",")] if ARGS.sizes else ([108, 256] if ARGS.quick else
                                                                        [256, 512, 1024, 2048])
    base_steps = ARGS.steps or (200 if ARGS.quick else 2000)
    equilibration = ARGS.equilibration if ARGS.equilibration is not None else (200 if ARGS.quick else 1000)
    repeats = min(ARGS.repeats, 3) if ARGS.quick else ARGS.repeats
    key = jax.random.PRNGKey(0)
    per_size = []
    for n in sizes:
        # Cost per step grows ~N at fixed density and cutoff, so steps ~1/N keeps every run near the same
        # wall time; multiples of 50, at least 250 so that each run spans several list rebuilds.
        n_steps = base_steps if ARGS.quick else max(250, int(round(base_steps * 256 / n / 50)) * 50)
        per_size.append(bench_size(n, key, n_steps, equilibration, repeats))
    result = {
        "n_atoms": sizes,
        "steps_per_second": [p["dmd_dist"]["steps_per_second"] for p in per_size],
        "jax_md_steps_per_second": [p["jax_md"][p["jax_md_fastest_format"]]["steps_per_second"] for p in per_size],
        "speedup_vs_jax_md": [p["speedup_vs_jax_md"] for p in per_size],
        "jax_md_fastest_format": [p["jax_md_fastest_format"] for p in per_size],
        "precision": ARGS.precision,
        "repeats": repeats,
        "equilibration_steps": equilibration,
        "system": {"element": "Ar", "sigma_nm": SIGMA, "epsilon_kJ_mol": EPSILON, "density_g_cm3": DENSITY,
                   "temperature_K": TEMPERATURE, "jax_md_r_onset_fraction": ONSET_FRACTION,
                   "capacity_factor": CAPACITY_FACTOR, "integrator": "velocity Verlet, NVE"},
        "per_size": per_size,
        "versions": {p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "jax-md")},
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
