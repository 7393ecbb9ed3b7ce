"""Cost of the MPNN potential against the classical one on the same liquid: forces, NVE segments, adjoint.

Liquid water (flexible SPC/Fw-like, `spc_fw_potential`, equilibrated once with Langevin dynamics) is the
MPNN's target workflow; every model then runs from the same frame with the same neighbour-list settings
(`neighbor_mode="list"`, one cutoff and skin for all, capacity factor 1.25).  Models: the classical
potential and the MPNN presets tiny, small and paper (untrained: freshly initialised parameters; the
cost of a network does not depend on its weights, only the neighbour-list rebuild count can, and it is
reported).  `--system argon` runs liquid argon (Lennard-Jones) instead.

For each model, three things are timed, each as one jitted executable (compile excluded: every
executable is compiled and called once before timing).  A timing sample repeats a call until it lasts
about `--target-seconds` and averages; the reported time is the best of `--repeats` samples, the models
and measurements interleaved within each repeat so that a slow spell of the shared machine hits all of
them:

- force:    `potential.forces(params, x, nbrs)` on M different frames (the equilibrated frame plus
            2 pm Gaussian noise, so nothing is loop-invariant) inside one `lax.scan`, the neighbour list
            fixed: `force_seconds_per_atom_step` = time / (M n_atoms).  Also `force_call_seconds`: one
            jitted call from Python, dispatch included;
- forward:  the loss of one leap-frog NVE segment of K steps, no gradient (`adjoint.run_segment`, as
            `gradcheck` runs it; neighbour list updated inside the scan): `forward_seconds_per_atom_step`
            = time / (K n_atoms).  A segment costs K + 2 force evaluations (the initial force and the final
            half kick), with list updates and recording;
- adjoint:  the value and gradient of the same loss with respect to the parameters with
            `ReverseTimeAdjoint` (O(1) memory, reverse-time reconstruction): `adjoint_seconds_per_atom_step`.
            The loss is the Green-Kubo self-diffusion estimate D = (1/3) int <v_i(0).v_i(t)>_i dt of the
            segment's records (every step recorded), as in `gradcheck`.  The reconstruction error
            max |x_hat_0 - x_0| (nm) is reported, so that a fast but wrong backward pass would show.

Ratios: `adjoint_over_forward` per model, and `*_vs_classical` (model time / classical time) per measure.

    python benchmarks/mpnn_cost.py [--quick] [--precision float64|float32] [--system water|argon]
                                   [--models classical,tiny,small,paper] [--steps 20] [--paper-steps N]

Prints one JSON object on stdout; progress goes to stderr.  See docs/mpnn_cost.md.
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import sys
import time

MODELS = ("classical", "tiny", "small", "paper")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (about 4 min on 2 cores, mostly compilation): 32 water molecules (cutoff 0.44 nm), "
                         "shorter timing samples, 200 equilibration steps")
    ap.add_argument("--precision", choices=("float64", "float32"), default="float64")
    ap.add_argument("--system", choices=("water", "argon"), default="water")
    ap.add_argument("--size", type=int, help="molecules (water; default 64, quick 32) or atoms (argon; default "
                                             "256, quick 108)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--steps", type=int, help="NVE segment length K (default 20)")
    ap.add_argument("--paper-steps", type=int, help="K for the paper preset (default: --steps)")
    ap.add_argument("--force-evals", type=int, help="frames M of the force timing (default 20)")
    ap.add_argument("--repeats", type=int, help="timed repeats (default 3); the best is reported")
    ap.add_argument("--target-seconds", type=float, help="each timing sample repeats a call until it lasts about "
                                                         "this long (default 0.5; quick 0.2)")
    ap.add_argument("--equilibration", type=int, help="Langevin steps with the classical model (default 1000; "
                                                      "quick 200)")
    ap.add_argument("--cutoff", type=float, help="nm, for every model (default: 0.6 nm, the presets' cutoff, "
                                                 "or the largest multiple of 0.01 nm with cutoff + skin within "
                                                 "half the box)")
    ap.add_argument("--skin", type=float, default=0.05, help="nm")
    args = ap.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        ap.error(f"unknown models {sorted(unknown)} (choose from {', '.join(MODELS)})")
    args.steps = args.steps or 20
    args.paper_steps = args.paper_steps or args.steps
    args.force_evals = args.force_evals or 20
    args.repeats = args.repeats or 3
    args.equilibration = args.equilibration if args.equilibration is not None else (200 if args.quick else 1000)
    args.target_seconds = args.target_seconds or (0.2 if args.quick else 0.5)
    return args


ARGS = parse_args()

import jax  # noqa: E402

# Before any array is created: fixes the default float type of systems, potentials and parameters.
jax.config.update("jax_enable_x64", ARGS.precision == "float64")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dmd_dist import integrators, potentials, systems  # noqa: E402
from dmd_dist.adjoint import DirectAdjoint, ReverseTimeAdjoint, Segment, run_segment  # noqa: E402
from dmd_dist.observables.transport import green_kubo_diffusion  # noqa: E402

CAPACITY_FACTOR = 1.25
MAX_REALLOCATIONS = 6
NOISE_NM = 0.002  # force-timing frames: the equilibrated frame plus this Gaussian noise per coordinate

# Per system: builder, classical model, state point, time step.  Water: flexible SPC/Fw-like with DSF
# Coulomb (alpha 3/nm, as configs/water_ir_quick.toml), 300 K, 1 g/cm^3, dt 0.5 fs (the O-H stretch).
# Argon: Lennard-Jones near the triple point (as benchmarks/adjoint_cost.py), dt 4 fs.
SYSTEMS = {
    "water": dict(temperature=300.0, density=1.0, dt=0.0005, friction=5.0, coulomb_alpha=3.0, size=64,
                  quick_size=32, classical="spc_fw"),
    "argon": dict(temperature=94.4, density=1.374, dt=0.004, friction=1.0, sigma=0.3405, epsilon=0.996,
                  size=256, quick_size=108, classical="lennard_jones"),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def n_params(params):
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def choose_cutoff(box, skin):
    half_box = 0.5 * float(np.min(np.asarray(box)))
    limit = math.floor((half_box - skin) * 100 + 1e-9) / 100
    return min(potentials.MPNN_PRESETS["tiny"].cutoff, limit)


def build_system(spec, size, key):
    if ARGS.system == "water":
        return systems.water_lattice(size, spec["temperature"], key, density=spec["density"])
    return systems.lattice_fluid(size, spec["temperature"], key, density=spec["density"])


def build_model(name, s, spec, cutoff):
    common = dict(cutoff=cutoff, skin=ARGS.skin, neighbor_mode="list", capacity_factor=CAPACITY_FACTOR)
    if name == "classical":
        if ARGS.system == "water":
            return potentials.spc_fw_potential(s, coulomb_alpha=spec["coulomb_alpha"], **common)
        # Plain truncation at the shared cutoff with the energy shifted to zero there.
        return potentials.lennard_jones_potential(s, spec["sigma"], spec["epsilon"], shift=True, **common)
    return potentials.mpnn_potential(s, name, seed=0, **common)


class Model:
    """One model's jitted executables, its start state and its timings."""

    def __init__(self, label, pot, params, s, x0, v0, frames, n_steps, dt):
        self.label, self.pot, self.params, self.n_steps = label, pot, params, n_steps
        self.x0, self.v0, self.frames = x0, v0, frames
        self.times = {"force": [], "force_call": [], "forward": [], "adjoint": []}
        dyn = integrators.Dynamics(pot, s.masses)  # NVE leap-frog, centre-of-mass velocity removed

        def record(state, p, v_frame):  # C(t) per atom: v_i(t).v_i(0)
            return jnp.sum(state.velocity * v_frame, axis=-1)

        seg = Segment(dyn, dt, n_steps, 1, record)

        def loss(adjoint):
            def f(p, x, v, probe, nbrs):
                res = run_segment(adjoint, seg, p, x, v, nbrs, v, probe)
                d = green_kubo_diffusion(jnp.mean(res.records, axis=-1), dt)
                return d, (res.neighbors.overflow, res.neighbors.rebuilds, res.neighbors.max_count)
            return f

        self.forward = jax.jit(loss(DirectAdjoint()))
        self.adjoint = jax.jit(jax.value_and_grad(loss(ReverseTimeAdjoint()), argnums=(0, 3), has_aux=True))
        self.force_call = jax.jit(pot.forces)

        def force_scan(p, xs, nbrs):
            def body(acc, x):
                return acc + pot.forces(p, x, nbrs), None
            return jax.lax.scan(body, jnp.zeros_like(xs[0]), xs)[0]

        self.force_scan = jax.jit(force_scan)
        self.probe = jnp.zeros((), x0.dtype)

    def compile_and_check(self):
        """First calls (compile + warm-up); re-allocate the neighbour list while a segment overflows."""
        capacity = None
        for _ in range(MAX_REALLOCATIONS):
            self.nbrs = self.pot.neighbors.allocate(self.x0, capacity=capacity)
            t0 = time.perf_counter()
            (_, aux_f), self.first_forward = timed(self.forward, self.params, self.x0, self.v0, self.probe, self.nbrs)
            ((value, aux_a), grads), self.first_adjoint = timed(self.adjoint, self.params, self.x0, self.v0,
                                                                 self.probe, self.nbrs)
            err = float(grads[1])
            overflow = bool(aux_f[0]) or bool(aux_a[0]) or not math.isfinite(err)
            if not overflow:
                break
            capacity = int(math.ceil(max(int(aux_f[2]), int(aux_a[2]), int(self.nbrs.capacity)) * CAPACITY_FACTOR))
            log(f"  {self.label}: neighbour list overflow, re-allocating with capacity {capacity} "
                f"({time.perf_counter() - t0:.0f} s lost)")
        else:
            raise RuntimeError(f"{self.label}: neighbour list keeps overflowing")
        self.loss = float(value)
        self.rebuilds = int(aux_f[1])
        self.max_count = int(aux_f[2])
        self.reconstruction_error = err
        self.grad_norm = float(jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads[0]))))
        _, self.first_force = timed(self.force_scan, self.params, self.frames, self.nbrs)
        _, self.first_force_call = timed(self.force_call, self.params, self.x0, self.nbrs)

    def calibrate(self, target):
        """Calls per measurement: enough that each lasts about `target` seconds (timer and scheduler noise
        of a shared machine are then small against it); the average over those calls is one sample."""
        self.number = {}
        for what, (fn, args) in self._calls().items():
            _, t = timed(fn, *args)
            self.number[what] = max(1, int(math.ceil(target / max(t, 1e-6))))

    def _calls(self):
        args = (self.params, self.x0, self.v0, self.probe, self.nbrs)
        return {"force": (self.force_scan, (self.params, self.frames, self.nbrs)),
                "force_call": (self.force_call, (self.params, self.x0, self.nbrs)),
                "forward": (self.forward, args), "adjoint": (self.adjoint, args)}

    def time_once(self):
        for what, (fn, args) in self._calls().items():
            number = self.number[what]
            t0 = time.perf_counter()
            for _ in range(number):
                jax.block_until_ready(fn(*args))
            self.times[what].append((time.perf_counter() - t0) / number)

    def report(self, n_atoms):
        best = {k: min(v) for k, v in self.times.items()}
        median = {k: float(np.median(v)) for k, v in self.times.items()}
        m, k = len(self.frames), self.n_steps
        out = {
            "force_seconds_per_atom_step": best["force"] / (m * n_atoms),
            "forward_seconds_per_atom_step": best["forward"] / (k * n_atoms),
            "adjoint_seconds_per_atom_step": best["adjoint"] / (k * n_atoms),
            "adjoint_over_forward": best["adjoint"] / best["forward"],
            "adjoint_over_force": best["adjoint"] / (k * best["force"] / m),
            "forward_over_force": best["forward"] / (k * best["force"] / m),
            "force_call_seconds": best["force_call"],
            "force_call_seconds_per_atom": best["force_call"] / n_atoms,
            "n_params": n_params(self.params),
            "steps": k,
            "force_evals_timed": m,
            "seconds_best": best,
            "seconds_median": median,
            "adjoint_over_forward_median": median["adjoint"] / median["forward"],
            "seconds_all": self.times,
            "calls_per_sample": self.number,
            "first_call_seconds": {"force": self.first_force, "force_call": self.first_force_call,
                                   "forward": self.first_forward, "adjoint": self.first_adjoint},
            "neighbor_capacity": int(self.nbrs.capacity),
            "max_neighbors_seen": self.max_count,
            "neighbor_rebuilds_in_segment": self.rebuilds,
            "loss_D_nm2_ps": self.loss,
            "grad_norm": self.grad_norm,
            "reconstruction_error_nm": self.reconstruction_error,
        }
        if hasattr(self.pot, "hyper"):
            h = self.pot.hyper
            out["hyper"] = {"features": h.features, "n_interactions": h.n_interactions, "n_radial": h.n_radial,
                            "hidden": list(h.hidden), "cutoff": h.cutoff, "avg_neighbors": h.avg_neighbors}
        return out


def main():
    t_start = time.perf_counter()
    spec = SYSTEMS[ARGS.system]
    size = ARGS.size or (spec["quick_size"] if ARGS.quick else spec["size"])
    key = jax.random.PRNGKey(0)
    k_build, k_prep, k_noise = jax.random.split(key, 3)
    s = build_system(spec, size, k_build)
    cutoff = ARGS.cutoff or choose_cutoff(s.box, ARGS.skin)
    if cutoff + ARGS.skin > 0.5 * float(np.min(np.asarray(s.box))):
        raise SystemExit(f"cutoff {cutoff} + skin {ARGS.skin} nm exceeds half the box ({float(s.box[0]):.4f} nm)")
    n = s.n_atoms
    log(f"{ARGS.system}: {n} atoms, box {float(s.box[0]):.4f} nm, cutoff {cutoff} nm, skin {ARGS.skin} nm, "
        f"{ARGS.precision}; equilibrating with the classical model ({ARGS.equilibration} Langevin steps)")
    pot_c, params_c = build_model("classical", s, spec, cutoff)
    t = time.perf_counter()
    if ARGS.equilibration:
        s = systems.prepare(s, pot_c, params_c, spec["temperature"], k_prep, ARGS.equilibration, spec["dt"],
                            spec["friction"])
    equilibration_seconds = time.perf_counter() - t
    x0, v0 = s.positions, s.velocities
    frames = x0[None] + NOISE_NM * jax.random.normal(k_noise, (ARGS.force_evals,) + x0.shape, x0.dtype)
    log(f"  equilibrated in {equilibration_seconds:.0f} s (density {s.density:.3f} g/cm^3)")

    models = {}
    for name in ARGS.models:
        label = "classical_" + spec["classical"] if name == "classical" else "mpnn_" + name
        pot, params = (pot_c, params_c) if name == "classical" else build_model(name, s, spec, cutoff)
        k = ARGS.paper_steps if name == "paper" else ARGS.steps
        m = Model(label, pot, params, s, x0, v0, frames, k, spec["dt"])
        t = time.perf_counter()
        m.compile_and_check()
        m.calibrate(ARGS.target_seconds)
        log(f"  {label:24s} {n_params(params):>7} params, "
            f"K = {k}: compiled and checked in {time.perf_counter() - t:.0f} s "
            f"(reconstruction error {m.reconstruction_error:.1e} nm, {m.rebuilds} list rebuilds)")
        models[label] = m

    for r in range(ARGS.repeats):
        t = time.perf_counter()
        for m in models.values():
            m.time_once()
        log(f"  repeat {r + 1}/{ARGS.repeats}: {time.perf_counter() - t:.0f} s")

    reports = {label: m.report(n) for label, m in models.items()}
    classical = next((r for label, r in reports.items() if label.startswith("classical")), None)
    if classical is not None:
        for r in reports.values():
            for key_ in ("force", "forward", "adjoint"):
                r[f"{key_}_vs_classical"] = (r[f"{key_}_seconds_per_atom_step"]
                                             / classical[f"{key_}_seconds_per_atom_step"])
    for label, r in reports.items():
        log(f"  {label:24s} force {r['force_seconds_per_atom_step'] * 1e6:8.3f}  forward "
            f"{r['forward_seconds_per_atom_step'] * 1e6:8.3f}  adjoint {r['adjoint_seconds_per_atom_step'] * 1e6:8.3f}"
            f" us/atom-step   adjoint/forward {r['adjoint_over_forward']:.2f}"
            + (f"   adjoint vs classical x{r['adjoint_vs_classical']:.1f}" if classical else ""))

    notes = []
    if ARGS.paper_steps != ARGS.steps and "paper" in ARGS.models:
        notes.append(f"the paper preset runs segments of K = {ARGS.paper_steps} steps instead of {ARGS.steps} "
                     "(its per-atom-step numbers are still per step)")
    result = {
        "benchmark": "mpnn_cost",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "system": ARGS.system,
        "n_atoms": n,
        "n_molecules": s.topology.n_molecules,
        "box_nm": float(s.box[0]),
        "density_g_cm3": s.density,
        "temperature_K": spec["temperature"],
        "precision": ARGS.precision,
        "cutoff_nm": cutoff,
        "skin_nm": ARGS.skin,
        "neighbor_mode": "list",
        "capacity_factor": CAPACITY_FACTOR,
        "dt_ps": spec["dt"],
        "steps": ARGS.steps,
        "paper_steps": ARGS.paper_steps,
        "force_evals": ARGS.force_evals,
        "repeats": ARGS.repeats,
        "equilibration_steps": ARGS.equilibration,
        "equilibration_seconds": equilibration_seconds,
        "classical_model": (f"spc_fw (flexible SPC/Fw-like water, DSF Coulomb alpha {spec['coulomb_alpha']}/nm)"
                            if ARGS.system == "water" else "Lennard-Jones, shifted, plain cutoff"),
        "mpnn_parameters": "freshly initialised (seed 0), untrained",
        "integrator": "leap-frog NVE (adjoint.run_segment), centre-of-mass velocity removed, no wrapping",
        "loss": "Green-Kubo D = (1/3) trapezoid(mean_i v_i(0).v_i(t_k), dt), every step recorded; gradient w.r.t. "
                "all parameters (and the reconstruction-error probe)",
        "time_method": "each sample: the mean over `calls_per_sample` back-to-back calls of a jitted executable "
                       f"(sized to last about {ARGS.target_seconds} s), after a first (compiling) call; best of "
                       "`repeats` samples, models and measurements interleaved within each repeat",
        "models": reports,
        "notes": notes,
        "total_wall_seconds": time.perf_counter() - t_start,
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     **{p: importlib.metadata.version(p) for p in ("jaxlib", "flax", "numpy")}},
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
