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

- force VJP: `potential.force_vjp(params, x, nbrs)` and its VJP applied to a fixed random cotangent a,
            (a . dF/dx, a . dF/dparams), on the same M frames in one `lax.scan`, summed: what the reverse-time
            adjoint does at every backward step.  `force_vjp_seconds_per_atom_step` = time / (M n_atoms).

Ratios: `adjoint_over_forward` per model, and `*_vs_classical` (model time / classical time) per measure.

Peers (`--peers jaxmd,e3x`, optional packages, see benchmarks/mpnn_peers.py): for every MPNN preset
asked for, JAX MD's neighbour-list graph network and a SchNet-like e3x model matched to it, each in two
graph layouts, time the force and the force VJP on the same frames; `peer_ratios` gives ours / peer.
`--force-only` times only those two (and checks them) for every model, without segments or adjoint.
Every force-timed model is checked against central differences of its own energy and forces
(`finite_difference_check`).

    python benchmarks/mpnn_cost.py [--quick] [--precision float64|float32] [--system water|argon]
                                   [--models classical,tiny,small,paper] [--steps 20] [--paper-steps N]
                                   [--peers jaxmd,e3x] [--force-only]

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

import devices  # benchmarks/devices.py

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
    ap.add_argument("--peers", default="", help="comma-separated peer models matched to each MPNN preset in "
                                                "--models: slots (ours as before the pair layout), jaxmd, e3x "
                                                "(both layouts each) or jaxmd_sparse, jaxmd_dense, e3x_sparse, "
                                                "e3x_dense; jaxmd and e3x need jax-md and e3x importable "
                                                "(docs/mpnn_cost.md)")
    ap.add_argument("--force-only", action="store_true", help="time only the force and the force VJP")
    devices.add_argument(ap)
    args = ap.parse_args()
    devices.select(args.device)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        ap.error(f"unknown models {sorted(unknown)} (choose from {', '.join(MODELS)})")
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if args.peers and not set(args.models) - {"classical"}:
        ap.error("--peers needs an MPNN preset in --models")
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


def finite_difference_errors(pot, params, graph, x, cotangent, key):
    """Relative errors, against central differences along one random direction, of the force (from the
    energy), of a . dF/dx and of a . dF/dparams (from the forces); float64 only (None in float32, where
    differences cannot resolve them).  Step h = 1e-6: positions move by h d nm, parameters by h q with
    q = p * N(0, 1) (relative, so parameters at zero stay there: the classical model's hydrogen LJ epsilon
    sits at the kink of sqrt(eps_i eps_j)).  h is small against the curvature of every model here, and a
    pair of a hard-cutoff model (JAX MD's) rarely crosses the cutoff within it."""
    if x.dtype != jnp.float64:
        return None
    h = 1e-6
    kx, kp = jax.random.split(key)
    d = jax.random.normal(kx, x.shape, x.dtype)
    leaves, treedef = jax.tree.flatten(params)
    q = treedef.unflatten([a * jax.random.normal(k, jnp.shape(a), a.dtype)
                           for k, a in zip(jax.random.split(kp, len(leaves)), leaves)])

    @jax.jit
    def errors(p, x, graph, a):
        def energy(y):
            return pot.energy(p, y, graph)

        def forces(y, s):  # at parameters p + s q
            return pot.forces(jax.tree.map(lambda u, v: u + s * v, p, q), y, graph)

        force, vjp = pot.force_vjp(p, x, graph)
        ax, ap = vjp(a)
        exact_fd = {
            "force": (-jnp.vdot(force, d), (energy(x + h * d) - energy(x - h * d)) / (2 * h)),
            "force_vjp_positions": (jnp.vdot(ax, d), jnp.vdot(a, forces(x + h * d, 0.0) - forces(x - h * d, 0.0))
                                    / (2 * h)),
            "force_vjp_params": (sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(ap), jax.tree.leaves(q))),
                                 jnp.vdot(a, forces(x, h) - forces(x, -h)) / (2 * h)),
        }
        return {k: jnp.abs(e - f) / jnp.abs(e) for k, (e, f) in exact_fd.items()}

    return {k: float(v) for k, v in errors(params, x, graph, cotangent).items()}


class ForceCost:
    """A potential's force and force-VJP executables on the M frames with a fixed graph, and their timings.

    `graph` is the potential's third argument: our neighbour list, or a peer's own graph structure.
    """

    def __init__(self, label, pot, params, frames, cotangent):
        self.label, self.pot, self.params, self.frames, self.cotangent = label, pot, params, frames, cotangent
        self.times = {"force": [], "force_vjp": []}
        self.first = {}

        def force_scan(p, xs, graph):
            def body(acc, x):
                return acc + pot.forces(p, x, graph), None
            return jax.lax.scan(body, jnp.zeros_like(xs[0]), xs)[0]

        def force_vjp_scan(p, xs, graph, a):  # the force and (a . dF/dx, a . dF/dparams), summed over frames
            def body(acc, x):
                f, vjp = pot.force_vjp(p, x, graph)
                return jax.tree.map(jnp.add, acc, (f, *vjp(a))), None
            return jax.lax.scan(body, jax.tree.map(jnp.zeros_like, (xs[0], xs[0], p)), xs)[0]

        self.force_scan = jax.jit(force_scan)
        self.force_vjp_scan = jax.jit(force_vjp_scan)

    def compile_forces(self, graph, key):
        """First (compiling) calls with `graph`, and the finite-difference check."""
        self.graph = graph
        _, self.first["force"] = timed(self.force_scan, self.params, self.frames, graph)
        (f, ax, _), self.first["force_vjp"] = timed(self.force_vjp_scan, self.params, self.frames, graph,
                                                    self.cotangent)
        if not (np.all(np.isfinite(f)) and np.all(np.isfinite(ax))):
            raise RuntimeError(f"{self.label}: non-finite forces or force VJP")
        self.fd_errors = finite_difference_errors(self.pot, self.params, graph, self.frames[0], self.cotangent, key)

    def calibrate(self, target):
        """Calls per measurement: enough that each lasts about `target` seconds (timer and scheduler noise
        of a shared machine are then small against it); the average over those calls is one sample."""
        self.number = {}
        for what, (fn, args) in self._calls().items():
            _, t = timed(fn, *args)
            self.number[what] = max(1, int(math.ceil(target / max(t, 1e-6))))

    def _calls(self):
        return {"force": (self.force_scan, (self.params, self.frames, self.graph)),
                "force_vjp": (self.force_vjp_scan, (self.params, self.frames, self.graph, self.cotangent))}

    def time_once(self):
        for what, (fn, args) in self._calls().items():
            number = self.number[what]
            t0 = time.perf_counter()
            for _ in range(number):
                jax.block_until_ready(fn(*args))
            self.times[what].append((time.perf_counter() - t0) / number)

    def report(self, n_atoms):
        best = {k: min(v) for k, v in self.times.items()}
        m = len(self.frames)
        out = {
            "force_seconds_per_atom_step": best["force"] / (m * n_atoms),
            "force_vjp_seconds_per_atom_step": best["force_vjp"] / (m * n_atoms),
            "force_vjp_over_force": best["force_vjp"] / best["force"],
            "n_params": n_params(self.params),
            "force_evals_timed": m,
            "seconds_best": best,
            "seconds_median": {k: float(np.median(v)) for k, v in self.times.items()},
            "seconds_all": self.times,
            "calls_per_sample": self.number,
            "first_call_seconds": self.first,
            "finite_difference_check": self.fd_errors,
        }
        if hasattr(self.pot, "hyper"):
            h = self.pot.hyper
            out["hyper"] = {"features": h.features, "n_interactions": h.n_interactions, "n_radial": h.n_radial,
                            "hidden": list(h.hidden), "cutoff": h.cutoff, "avg_neighbors": h.avg_neighbors}
        if hasattr(self.pot, "graph_info"):
            out["graph"], out["matching"] = self.pot.graph_info, self.pot.matching
        else:
            out["neighbor_capacity"] = int(self.graph.capacity)
        return out


class Model(ForceCost):
    """Our model: the force timings plus one jitted force call, an NVE segment and its adjoint gradient."""

    def __init__(self, label, pot, params, s, x0, v0, frames, cotangent, n_steps, dt):
        super().__init__(label, pot, params, frames, cotangent)
        self.n_steps, self.x0, self.v0 = n_steps, x0, v0
        self.times.update({"force_call": [], "forward": [], "adjoint": []})
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
        self.probe = jnp.zeros((), x0.dtype)

    def compile_and_check(self, key):
        """First calls (compile + warm-up); re-allocate the neighbour list while a segment overflows."""
        capacity = None
        for _ in range(MAX_REALLOCATIONS):
            nbrs = self.pot.neighbors.allocate(self.x0, capacity=capacity)
            t0 = time.perf_counter()
            (_, aux_f), self.first["forward"] = timed(self.forward, self.params, self.x0, self.v0, self.probe, nbrs)
            ((value, aux_a), grads), self.first["adjoint"] = timed(self.adjoint, self.params, self.x0, self.v0,
                                                                    self.probe, nbrs)
            err = float(grads[1])
            overflow = bool(aux_f[0]) or bool(aux_a[0]) or not math.isfinite(err)
            if not overflow:
                break
            capacity = int(math.ceil(max(int(aux_f[2]), int(aux_a[2]), int(nbrs.capacity)) * CAPACITY_FACTOR))
            log(f"  {self.label}: neighbour list overflow, re-allocating with capacity {capacity} "
                f"({time.perf_counter() - t0:.0f} s lost)")
        else:
            raise RuntimeError(f"{self.label}: neighbour list keeps overflowing")
        self.loss = float(value)
        self.rebuilds = int(aux_f[1])
        self.max_count = int(aux_f[2])
        self.reconstruction_error = err
        self.grad_norm = float(jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads[0]))))
        self.compile_forces(nbrs, key)
        _, self.first["force_call"] = timed(self.force_call, self.params, self.x0, nbrs)

    def _calls(self):
        args = (self.params, self.x0, self.v0, self.probe, self.graph)
        return {**super()._calls(), "force_call": (self.force_call, (self.params, self.x0, self.graph)),
                "forward": (self.forward, args), "adjoint": (self.adjoint, args)}

    def report(self, n_atoms):
        out = super().report(n_atoms)
        best, median = out["seconds_best"], out["seconds_median"]
        m, k = len(self.frames), self.n_steps
        out.update({
            "forward_seconds_per_atom_step": best["forward"] / (k * n_atoms),
            "adjoint_seconds_per_atom_step": best["adjoint"] / (k * n_atoms),
            "adjoint_over_forward": best["adjoint"] / best["forward"],
            "adjoint_over_force": best["adjoint"] / (k * best["force"] / m),
            "forward_over_force": best["forward"] / (k * best["force"] / m),
            "force_call_seconds": best["force_call"],
            "force_call_seconds_per_atom": best["force_call"] / n_atoms,
            "steps": k,
            "adjoint_over_forward_median": median["adjoint"] / median["forward"],
            "max_neighbors_seen": self.max_count,
            "neighbor_rebuilds_in_segment": self.rebuilds,
            "loss_D_nm2_ps": self.loss,
            "grad_norm": self.grad_norm,
            "reconstruction_error_nm": self.reconstruction_error,
        })
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
    k_cotangent, k_check = jax.random.split(jax.random.fold_in(key, 1))
    cotangent = jax.random.normal(k_cotangent, x0.shape, x0.dtype)  # of the force VJP
    log(f"  equilibrated in {equilibration_seconds:.0f} s (density {s.density:.3f} g/cm^3)")
    if ARGS.peers:
        import mpnn_peers  # its peers' packages are optional: only now
        ARGS.peers = mpnn_peers.expand(ARGS.peers)

    models = {}
    for name in ARGS.models:
        label = "classical_" + spec["classical"] if name == "classical" else "mpnn_" + name
        pot, params = (pot_c, params_c) if name == "classical" else build_model(name, s, spec, cutoff)
        k = ARGS.paper_steps if name == "paper" else ARGS.steps
        t = time.perf_counter()
        if ARGS.force_only:
            m = ForceCost(label, pot, params, frames, cotangent)
            m.compile_forces(pot.neighbors.allocate(x0), k_check)
            detail = ""
        else:
            m = Model(label, pot, params, s, x0, v0, frames, cotangent, k, spec["dt"])
            m.compile_and_check(k_check)
            detail = (f"K = {k}, reconstruction error {m.reconstruction_error:.1e} nm, "
                      f"{m.rebuilds} list rebuilds, ")
        timers = [m]
        for peer in ARGS.peers if name != "classical" else []:
            ppot, pparams, graph = mpnn_peers.build(peer, pot, params, s, x0, m.graph, ARGS.skin, CAPACITY_FACTOR)
            timers.append(ForceCost(f"{peer}_{name}", ppot, pparams, frames, cotangent))
            timers[-1].compile_forces(graph, k_check)
        for m_ in timers:
            m_.calibrate(ARGS.target_seconds)
            errors = ", ".join(f"{k} {v:.0e}" for k, v in (m_.fd_errors or {}).items()) or "float32: not checked"
            log(f"  {m_.label:24s} {n_params(m_.params):>7} params: {detail if m_ is m else ''}"
                f"finite-difference errors: {errors}")
            models[m_.label] = m_
        log(f"    compiled and checked in {time.perf_counter() - t:.0f} s")

    for r in range(ARGS.repeats):
        t = time.perf_counter()
        for m in models.values():
            m.time_once()
        log(f"  repeat {r + 1}/{ARGS.repeats}: {time.perf_counter() - t:.0f} s")

    reports = {label: m.report(n) for label, m in models.items()}
    classical = next((r for label, r in reports.items() if label.startswith("classical")), None)
    if classical is not None:
        for r in reports.values():
            for key_ in ("force", "force_vjp", "forward", "adjoint"):
                if f"{key_}_seconds_per_atom_step" in r:
                    r[f"{key_}_vs_classical"] = (r[f"{key_}_seconds_per_atom_step"]
                                                 / classical[f"{key_}_seconds_per_atom_step"])
    peer_ratios = {}
    for peer in ARGS.peers:
        for name in set(ARGS.models) - {"classical"}:
            ours, theirs = reports["mpnn_" + name], reports[f"{peer}_{name}"]
            peer_ratios[f"{peer}_{name}"] = {
                "matched_to": "mpnn_" + name,
                **{f"{key_}_ours_over_peer": ours[f"{key_}_seconds_per_atom_step"]
                   / theirs[f"{key_}_seconds_per_atom_step"] for key_ in ("force", "force_vjp")}}
    for label, r in reports.items():
        us = {key_: r[f"{key_}_seconds_per_atom_step"] * 1e6 for key_ in ("force", "force_vjp", "forward", "adjoint")
              if f"{key_}_seconds_per_atom_step" in r}
        log(f"  {label:24s} " + "  ".join(f"{key_} {v:8.3f}" for key_, v in us.items()) + " us/atom-step"
            + (f"   ours/peer: force {peer_ratios[label]['force_ours_over_peer']:.2f}, force VJP "
               f"{peer_ratios[label]['force_vjp_ours_over_peer']:.2f}" if label in peer_ratios else ""))

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
        "force_only": ARGS.force_only,
        "models": reports,
        "peer_ratios": peer_ratios,
        "notes": notes,
        "total_wall_seconds": time.perf_counter() - t_start,
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     **{p: importlib.metadata.version(p) for p in ("jaxlib", "flax", "numpy")
                        + tuple(sorted({"jax-md" if name.startswith("jaxmd") else "e3x" for name in ARGS.peers
                                       if name != "slots"}))}},
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
