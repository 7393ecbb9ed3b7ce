"""Memory and time of the gradient strategies against window length (docs/method.md §3).

Liquid argon (Lennard-Jones, neighbour list), one leap-frog NVE segment of `steps` steps recording the
atom-averaged velocity autocorrelation C(t_k) = <v_i(0) . v_i(t_k)>_i every `record_every` steps; the loss
is the Green-Kubo self-diffusion coefficient D = (1/3) int C dt (trapezoid), which depends on every
record, so every backward step does real work.  Four strategies, each for every window length:

- forward:    the loss only (jit of the plain scan, no gradient): the cost unit;
- adjoint:    value and gradient (parameters, x0, v0) with `ReverseTimeAdjoint` (custom VJP, O(1) memory);
- checkpoint: the same with `CheckpointAdjoint(default_checkpoint_every(steps))` (~sqrt(steps) per group);
- direct:     the same with `DirectAdjoint` (reverse-mode autodiff through the scan, O(steps) memory).

Each (strategy, steps) runs in a fresh Python process (this script re-invoked with a hidden `--worker`),
so that its process memory is its own.  There the function is jitted, lowered and compiled, and

- `*_peak_bytes_compiled`: XLA's static buffer assignment, `compiled.memory_analysis()`:
  argument + output + temp - alias bytes (`*_temp_bytes_compiled`: temp alone);
- `*_peak_bytes_rss`: measured, the largest increase of the process's resident set over its value just
  before a call of the compiled executable, over the warm-up call and the timed repeats.  The kernel's
  peak-RSS mark (VmHWM) is reset before each call (/proc/self/clear_refs, Linux), and free heap memory
  is handed back to the OS first (malloc_trim), so compile-time memory is not counted and memory freed
  by earlier calls hides little of a call's own (hence the max over calls).  Falls back to polling RSS
  every 0.5 ms where VmHWM cannot be reset.  Resolution: ~0.2-1 MB of process allocations outside XLA's
  buffers land in every measurement;
- `*_seconds`: the best of `--repeats` calls after one warm-up call (compile time excluded, reported
  separately as `compile_seconds`).  Because the host may be shared, each gradient worker also compiles
  the forward-only loss and calls it alternately with the gradient: `*_time_ratio_vs_forward_paired`
  compares the two under the same load (`*_time_ratio_vs_forward` divides times from different processes).

Executions whose compiled peak exceeds `--max-bytes` are skipped (direct backprop of long windows); their
compiled numbers are still reported and their measured entries are null.

The records are C(t_k) itself, one scalar per record ((K+1) floats, `records_bytes`, a few kB), not the
per-atom products: the loss needs only the atom average, so nothing is hidden by recording it, and the
adjoint's memory is compared as is, records included, with nothing subtracted.

Also checked: the adjoint's and checkpointing's gradients against direct backprop at each window where
direct ran (`adjoint_vs_direct_rel_err`, the shortest window in `adjoint_vs_direct_rel_err_shortest`), the
adjoint's against checkpointing's at every window (`adjoint_vs_checkpoint_rel_err`), and the reverse-time
reconstruction error max |x_hat_0 - x_0| (nm), so a fast but wrong adjoint would show.

    python benchmarks/adjoint_cost.py [--quick] [--precision float64|float32] [--steps 500 1000 2000 5000]
                                      [--plot docs/adjoint_memory.png]

Prints one JSON object on stdout (progress on stderr); without --quick (or with --plot) writes the
memory-vs-steps plot.  See docs/adjoint_cost.md.
"""

import argparse
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STRATEGIES = ("forward", "adjoint", "checkpoint", "direct")
TEMPERATURE = 94.4  # K
DENSITY = 1.374  # g/cm^3
SIGMA, EPSILON = 0.3405, 0.996  # nm, kJ/mol
SYSTEMS = {
    "argon108": dict(n_atoms=None, box=None, cutoff=None, skin=0.06, dt=0.004, record_every=1, precision="float64",
                     steps=[500, 1000, 2000, 5000], steps_quick=[100, 300, 1000]),
    # The paper's argon (Han & Yu 2025; configs/argon_diffusion.toml), as the issue on adjoint cost measured it.
    "argon346": dict(n_atoms=346, box=2.5562, cutoff=1.0, skin=0.1, dt=0.001, record_every=2, precision="float32",
                     steps=[500, 2000], steps_quick=[100, 300]),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# process memory
# ---------------------------------------------------------------------------------------------------------
def _status_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _trim_heap():
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _can_reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kb("VmHWM") <= _status_kb("VmRSS") + 64
    except OSError:
        return False


class PeakRSS:
    """Increase of the resident set over its value at entry, at its peak inside the block (bytes)."""

    def __init__(self, method):
        self.method = method

    def __enter__(self):
        _trim_heap()
        if self.method == "vmhwm":
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the peak-RSS mark to the current RSS
            self.base = _status_kb("VmRSS") * 1024
        else:
            import psutil

            proc = psutil.Process()
            self.base = proc.memory_info().rss
            self.peak = self.base
            self._stop = threading.Event()

            def poll():
                while not self._stop.is_set():
                    self.peak = max(self.peak, proc.memory_info().rss)
                    time.sleep(0.0005)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.method == "vmhwm":
            self.peak = _status_kb("VmHWM") * 1024
        else:
            self._stop.set()
            self._thread.join()
        self.increase = max(0, self.peak - self.base)
        return False


# ---------------------------------------------------------------------------------------------------------
# worker: one (strategy, steps) in a fresh process
# ---------------------------------------------------------------------------------------------------------
def worker(spec):
    import jax

    if spec["precision"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from dmd_dist import integrators, potentials, systems
    from dmd_dist.adjoint import CheckpointAdjoint, DirectAdjoint, ReverseTimeAdjoint, Segment, run_segment
    from dmd_dist.observables.transport import green_kubo_diffusion
    from dmd_dist.segments import over_frames

    dtype = np.float64 if spec["precision"] == "float64" else np.float32
    frame = np.load(spec["frame"])
    n = len(frame["masses"])
    s = systems.make_system(frame["positions"].astype(dtype), frame["masses"].astype(dtype),
                            frame["box"].astype(dtype), np.zeros(n), ("Ar",),
                            velocities=frame["velocities"].astype(dtype))
    pot, params = potentials.lennard_jones_potential(s, SIGMA, EPSILON, spec["cutoff"], skin=spec["skin"],
                                                     neighbor_mode="list")
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    dyn = integrators.Dynamics(pot, s.masses)
    steps, re, dt = spec["steps"], spec["record_every"], spec["dt"]

    def vacf(state, p, v_frame):  # C(t) = <v_i(0) . v_i(t)>_i: one scalar per record
        return jnp.mean(jnp.sum(state.velocity * v_frame, axis=-1))

    seg = Segment(dyn, dt, steps, re, vacf)
    strategy = spec["strategy"]
    adjoint = {"forward": DirectAdjoint(), "direct": DirectAdjoint(), "adjoint": ReverseTimeAdjoint(),
               "checkpoint": CheckpointAdjoint(spec["checkpoint_every"])}[strategy]

    def loss(p, x, v, probe, nbrs):
        res = run_segment(adjoint, seg, p, x, v, nbrs, v, probe)
        return green_kubo_diffusion(res.records, dt * re), res.neighbors.overflow

    if strategy == "forward":
        fn = jax.jit(loss)
    else:
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))

    x0, v0 = s.positions, s.velocities
    replicas = spec["replicas"]

    if replicas > 1:
        # R replicas from the one frame, velocities scaled by 1 + 1% noise each (distinct trajectories that
        # decorrelate within a few hundred steps), on one device: vmapped as the trainer runs them, or one after
        # another (--batching map).
        noise = np.random.default_rng(1).standard_normal((replicas,) + v0.shape).astype(dtype)
        x0 = jnp.broadcast_to(x0, (replicas,) + x0.shape)
        v0 = v0[None] * (1 + 0.01 * jnp.asarray(noise))
        one_loss = loss

        def loss(p, x, v, probe, nbrs):
            # The replicas side by side (vmap) or one after another (lax.map), as the trainer batches them.
            d, overflow = over_frames(lambda p_, x_, v_, n_: one_loss(p_, x_, v_, probe, n_),
                                      spec["batching"])(p, x, v, nbrs)
            return jnp.sum(d), jnp.any(overflow)

        fn = jax.jit(loss) if strategy == "forward" else jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3),
                                                                                      has_aux=True))
    probe = jnp.zeros((), dtype)
    capacity = None
    rss_method = "vmhwm" if _can_reset_hwm() else "psutil-poll"
    out = {"strategy": strategy, "steps": steps, "rss_method": rss_method, "executed": False}
    for _attempt in range(5):
        nbrs = pot.neighbors.allocate(x0, capacity=capacity)
        args = (params, x0, v0, probe, nbrs)
        t = time.perf_counter()
        compiled = fn.lower(*args).compile()
        out["compile_seconds"] = time.perf_counter() - t
        ma = compiled.memory_analysis()
        mem = {k: int(getattr(ma, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                 "alias_size_in_bytes", "temp_size_in_bytes",
                                                 "generated_code_size_in_bytes")}
        mem["peak_memory_in_bytes"] = int(getattr(ma, "peak_memory_in_bytes", 0) or 0)
        out["memory_analysis"] = mem
        out["peak_bytes_compiled"] = (mem["argument_size_in_bytes"] + mem["output_size_in_bytes"]
                                      + mem["temp_size_in_bytes"] - mem["alias_size_in_bytes"])
        out["temp_bytes_compiled"] = mem["temp_size_in_bytes"]
        out["neighbor_capacity"] = int(nbrs.capacity)
        if out["peak_bytes_compiled"] > spec["max_bytes"]:
            out["skipped"] = (f"compiled peak {out['peak_bytes_compiled'] / 1e9:.2f} GB exceeds "
                              f"--max-bytes {spec['max_bytes'] / 1e9:.2f} GB: not executed")
            return out
        jax.block_until_ready(args)
        seconds, rss = [], []
        result = None
        for call in range(1 + spec["repeats"]):
            result = None
            with PeakRSS(rss_method) as peak:
                t = time.perf_counter()
                result = compiled(*args)
                jax.block_until_ready(result)
                elapsed = time.perf_counter() - t
            rss.append(peak.increase)
            if call:  # the first call is the warm-up
                seconds.append(elapsed)
            if call == 0:
                overflow = bool(result[1] if strategy == "forward" else result[0][1])
                if overflow:
                    break
        if overflow:
            capacity = int(min(n - 1, math.ceil(1.25 * int(jnp.max(nbrs.max_count)) + 1)))
            capacity = max(capacity, int(nbrs.capacity) + max(1, int(nbrs.capacity) // 4))
            log(f"    neighbour list overflow: capacity {nbrs.capacity} -> {capacity}, recompiling")
            if int(nbrs.capacity) >= n - 1:
                raise RuntimeError("neighbour list overflows at full capacity")
            continue
        break
    else:
        raise RuntimeError("neighbour list still overflowing after 5 re-allocations")
    out.update(executed=True, seconds=min(seconds), seconds_all=seconds, peak_bytes_rss=max(rss),
               rss_increase_per_call=rss, rss_baseline_bytes=_status_kb("VmRSS") * 1024)
    if strategy != "forward":
        # Paired timing: the forward-only loss compiled in this same process and called alternately with
        # the gradient, so that both see the same machine load (the host may be shared).
        def forward_loss(p, x, v, probe, nbrs):
            def one(p_, x_, v_, n_):
                res = run_segment(DirectAdjoint(), seg, p_, x_, v_, n_, v_, probe)
                return green_kubo_diffusion(res.records, dt * re), res.neighbors.overflow

            if replicas == 1:
                return one(p, x, v, nbrs)
            d, overflow = over_frames(one, spec["batching"])(p, x, v, nbrs)
            return jnp.sum(d), jnp.any(overflow)

        fwd = jax.jit(forward_loss).lower(*args).compile()
        jax.block_until_ready(fwd(*args))
        t_fwd, t_grad = [], []
        for _ in range(spec["repeats"]):
            for f, times in ((fwd, t_fwd), (compiled, t_grad)):
                t = time.perf_counter()
                jax.block_until_ready(f(*args))
                times.append(time.perf_counter() - t)
        out.update(paired_forward_seconds=min(t_fwd), paired_seconds=min(t_grad))
    if strategy == "forward":
        out["loss"] = float(result[0])
    else:
        (value, _), grads = result
        out["loss"] = float(value)
        g_params, g_x, g_v, g_probe = grads
        leaves = jax.tree_util.tree_flatten_with_path(g_params)[0]
        out["grad_params"] = {jax.tree_util.keystr(p): np.asarray(leaf).reshape(-1).tolist() for p, leaf in leaves}
        np.savez(spec["grads"], x=np.asarray(g_x), v=np.asarray(g_v))
        out["reconstruction_error_nm"] = float(g_probe)  # 0 for checkpoint/direct; inf: list overflowed
    return out


# ---------------------------------------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------------------------------------
def prepare_frame(n_atoms, skin, dt, equilibration_steps, path, box=None, cutoff=None):
    """Melt and equilibrate liquid argon (float64, Langevin), save the frame; returns (box, density, cutoff).

    `box` None: Rahman's density; `cutoff` None: 0.8 nm where the box allows."""
    import jax

    from dmd_dist import potentials, systems

    key = jax.random.PRNGKey(0)
    s = systems.lattice_fluid(n_atoms, TEMPERATURE, key, density=None if box else DENSITY, box=box)
    # Cutoff 0.8 nm (2.35 sigma) where the box allows; cutoff + skin must stay within half the box.
    cutoff = cutoff or round(min(0.8, 0.5 * float(np.min(np.asarray(s.box))) - skin - 0.005), 3)
    log(f"equilibrating {n_atoms} argon atoms (box {float(s.box[0]):.4f} nm, cutoff {cutoff} nm, skin {skin} nm) ...")
    pot, params = potentials.lennard_jones_potential(s, SIGMA, EPSILON, cutoff, skin=skin, neighbor_mode="list")
    s = systems.prepare(s, pot, params, TEMPERATURE, key, equilibration_steps, dt, 1.0, melt_temperature=190.0)
    np.savez(path, positions=np.asarray(s.positions), velocities=np.asarray(s.velocities),
             masses=np.asarray(s.masses), box=np.asarray(s.box))
    return float(np.asarray(s.box)[0]), s.density, cutoff


def run_worker(spec, tmp):
    spec_path = Path(tmp) / f"spec_{spec['strategy']}_{spec['steps']}.json"
    spec["result"] = str(spec_path.with_suffix(".out.json"))
    spec["grads"] = str(spec_path.with_suffix(".grads.npz"))
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"worker {spec['strategy']} {spec['steps']} failed:\n{r.stderr[-4000:]}")
    out = json.loads(Path(spec["result"]).read_text())
    if out.get("executed") and spec["strategy"] != "forward":
        g = np.load(spec["grads"])
        out["_grad_state"] = (g["x"], g["v"])
    return out


def grad_rel_err(a, b):
    """max over parameters of |a-b|/|b|, and max over the two state gradients of max|a-b|/max|b|."""
    params = max(abs(x - y) / max(abs(y), 1e-300) for k in b["grad_params"]
                 for x, y in zip(a["grad_params"][k], b["grad_params"][k]))
    state = max(float(np.max(np.abs(x - y)) / np.max(np.abs(y))) for x, y in zip(a["_grad_state"], b["_grad_state"]))
    return {"params": params, "state": state}


def _finite(obj):
    """Strict JSON: non-finite floats (a diverged reconstruction, an overflowed list) as strings."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def main():
    import devices  # benchmarks/devices.py

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke-sized run (argon108: 64 atoms, steps 100 300 1000; "
                                                         "argon346: steps 100 300)")
    ap.add_argument("--system", choices=tuple(SYSTEMS), default="argon108",
                    help="argon108: Rahman's density, cutoff 0.8 nm, dt 4 fs, every step recorded, float64; "
                         "argon346: the paper's argon (346 atoms in a 2.5562 nm box, cutoff 1.0 nm, skin 0.1 nm, "
                         "dt 1 fs, recorded every 2 steps, float32)")
    ap.add_argument("--replicas", type=int, default=1, help="replicas on one device (the loss is the sum "
                                                             "of their D, as the trainer sums segments)")
    ap.add_argument("--batching", choices=("vmap", "map"), default="vmap",
                    help="several replicas: vmapped side by side (default, as the trainer runs them) or one after "
                         "another with lax.map")
    ap.add_argument("--precision", choices=("float64", "float32"), help="default: the system's")
    ap.add_argument("--steps", type=int, nargs="+", help="window lengths in steps (default: argon108 500 1000 2000 "
                                                         "5000; argon346 500 2000)")
    ap.add_argument("--atoms", type=int, help="number of atoms (argon108 only; default 108, quick 64)")
    ap.add_argument("--dt", type=float, help="ps (default: the system's)")
    ap.add_argument("--record-every", type=int, help="default: the system's")
    ap.add_argument("--repeats", type=int, help="timed calls after the warm-up (default 3; quick: 2)")
    ap.add_argument("--max-bytes", type=float, default=3.2e9,
                    help="do not execute a (strategy, steps) whose compiled peak exceeds this")
    ap.add_argument("--plot", help="write the memory-vs-steps plot here (default: docs/adjoint_memory.png "
                                   "unless --quick)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    devices.add_argument(ap)
    args = ap.parse_args()
    devices.select(args.device)  # the workers inherit it

    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        Path(spec["result"]).write_text(json.dumps(worker(spec)))
        return

    system = SYSTEMS[args.system]
    if args.atoms and args.system != "argon108":
        ap.error("--atoms applies to --system argon108 only")
    if args.replicas < 1:
        ap.error("--replicas must be at least 1")
    args.precision = args.precision or system["precision"]
    args.dt = args.dt or system["dt"]
    args.record_every = args.record_every or system["record_every"]
    n_atoms = system["n_atoms"] or args.atoms or (64 if args.quick else 108)
    steps_list = sorted(args.steps or (system["steps_quick"] if args.quick else system["steps"]))
    repeats = args.repeats or (2 if args.quick else 3)
    plot_path = args.plot or (None if args.quick or args.system != "argon108" else str(ROOT / "docs/adjoint_memory.png"))
    if any(s % args.record_every for s in steps_list):
        ap.error("every --steps value must be a multiple of --record-every")
    skin = system["skin"]  # nm

    import jax

    jax.config.update("jax_enable_x64", True)  # the parent only equilibrates (in float64); workers choose
    from dmd_dist.segments import default_checkpoint_every

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adjoint_cost_") as tmp:
        frame = str(Path(tmp) / "frame.npz")
        box, density, cutoff = prepare_frame(n_atoms, skin, 0.004, 500 if args.quick else 2000, frame,
                                             system["box"], system["cutoff"])
        results = {name: [] for name in STRATEGIES}
        for steps in steps_list:
            every = default_checkpoint_every(steps, args.record_every)
            for name in STRATEGIES:
                spec = dict(strategy=name, steps=steps, precision=args.precision, frame=frame, cutoff=cutoff,
                            skin=skin, dt=args.dt, record_every=args.record_every, checkpoint_every=every,
                            repeats=repeats, max_bytes=args.max_bytes, replicas=args.replicas,
                            batching=args.batching)
                t = time.perf_counter()
                r = run_worker(spec, tmp)
                r["checkpoint_every"] = every
                results[name].append(r)
                msg = (f"  steps {steps:6d} {name:10s} compiled {r['peak_bytes_compiled'] / 1e6:9.2f} MB (temp "
                       f"{r['temp_bytes_compiled'] / 1e6:9.2f})")
                if r["executed"]:
                    msg += f"  rss +{r['peak_bytes_rss'] / 1e6:9.2f} MB  {r['seconds']:8.3f} s"
                    if "paired_seconds" in r:
                        msg += f" (paired: x{r['paired_seconds'] / r['paired_forward_seconds']:.2f} forward)"
                else:
                    msg += "  " + r["skipped"]
                log(msg + f"   [{time.perf_counter() - t:.0f} s wall]")

    def col(name, key):
        return [r.get(key) if r["executed"] or key in ("peak_bytes_compiled", "temp_bytes_compiled",
                                                          "compile_seconds", "neighbor_capacity") else None
                for r in results[name]]

    itemsize = 8 if args.precision == "float64" else 4
    out = {
        "benchmark": "adjoint_cost",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "jaxlib": __import__("jaxlib").__version__, "numpy": np.__version__},
        "precision": args.precision,
        "system": f"{args.system}: liquid argon, Lennard-Jones, neighbour list mode 'list'",
        "replicas": args.replicas,
        "batching": args.batching,
        "n_atoms": n_atoms, "box_nm": box, "density_g_cm3": density, "temperature_K": TEMPERATURE,
        "sigma_nm": SIGMA, "epsilon_kJ_mol": EPSILON, "cutoff_nm": cutoff, "skin_nm": skin,
        "neighbor_capacity": col("forward", "neighbor_capacity"),
        "integrator": "leap-frog NVE (centre-of-mass velocity removed), run_segment",
        "dt_ps": args.dt, "record_every": args.record_every,
        "record": "C(t_k) = mean_i v_i(0).v_i(t_k): one scalar per record",
        "loss": "Green-Kubo D = (1/3) trapezoid(C, dt*record_every), nm^2/ps; gradient w.r.t. (sigma, epsilon), "
                "x0, v0",
        "steps": steps_list,
        "window_ps": [s * args.dt for s in steps_list],
        "checkpoint_every": [r["checkpoint_every"] for r in results["checkpoint"]],
        "records_bytes": [(s // args.record_every + 1) * itemsize for s in steps_list],
        "repeats": repeats,
        "memory_method": {
            "compiled": "compiled.memory_analysis(): argument + output + temp - alias bytes (XLA's static "
                        "buffer assignment); *_temp_bytes_compiled is the temp part alone",
            "rss": "fresh process per (strategy, steps); max over the warm-up and timed calls of (peak RSS "
                   "during the call - RSS just before it), after gc + malloc_trim; peak RSS from VmHWM reset by "
                   "/proc/self/clear_refs (or polled every 0.5 ms where that is unavailable)",
            "records": "records are C(t_k) scalars, (K+1)*itemsize bytes, included (nothing subtracted)",
            "rss_method": sorted({r["rss_method"] for rs in results.values() for r in rs}),
        },
        "time_method": f"best of {repeats} calls of the compiled executable after one warm-up call "
                       "(compile excluded; *_compile_seconds separately); *_time_ratio_vs_forward_paired: "
                       "the gradient and a forward-only executable compiled in the same process, called "
                       f"alternately {repeats} times each, best of each",
    }
    for name in STRATEGIES:
        out[f"{name}_seconds"] = col(name, "seconds")
    for name in STRATEGIES:
        compiled, temp = col(name, "peak_bytes_compiled"), col(name, "temp_bytes_compiled")
        rss = col(name, "peak_bytes_rss")
        out[f"{name}_peak_bytes"] = {"compiled": compiled, "compiled_temp": temp, "rss": rss}
        out[f"{name}_peak_bytes_compiled"] = compiled
        out[f"{name}_temp_bytes_compiled"] = temp
        out[f"{name}_peak_bytes_rss"] = rss
    for name in STRATEGIES:
        out[f"{name}_compile_seconds"] = col(name, "compile_seconds")
    skipped = [f"{r['strategy']} steps={r['steps']}: {r['skipped']}" for rs in results.values() for r in rs
               if not r["executed"]]
    out["skipped"] = skipped

    # -- goals -------------------------------------------------------------------------------------------
    first, last = 0, len(steps_list) - 1
    adj_c, adj_r = out["adjoint_peak_bytes_compiled"], out["adjoint_peak_bytes_rss"]
    out["adjoint_memory_ratio_longest_vs_shortest"] = ratio(adj_c[last], adj_c[first])
    out["adjoint_memory_ratio_longest_vs_shortest_rss"] = ratio(adj_r[last], adj_r[first])
    if None not in (adj_r[first], adj_r[last]):
        # Absolute growth: compare with the noise of the RSS measurement (rss_resolution_note) and with
        # direct backprop's growth.
        out["adjoint_rss_growth_bytes_longest_minus_shortest"] = adj_r[last] - adj_r[first]
    out["rss_excess_over_compiled_bytes"] = {
        name: [None if r is None else r - c for r, c in zip(out[f"{name}_peak_bytes_rss"],
                                                          out[f"{name}_peak_bytes_compiled"])]
        for name in STRATEGIES}
    out["rss_resolution_note"] = (
        "RSS increases include 0.2-1 MB of process allocations outside XLA's buffers (seen in the forward-only "
        "run too, and growing slightly with call duration); the compiled numbers are exact buffer sizes")
    dir_c = out["direct_peak_bytes_compiled"]
    out["direct_memory_ratio_longest_vs_shortest"] = ratio(dir_c[last], dir_c[first])
    ran = [i for i, v in enumerate(out["direct_peak_bytes_rss"]) if v is not None]
    if len(ran) >= 2:
        out["direct_memory_ratio_rss"] = {"steps": [steps_list[ran[0]], steps_list[ran[-1]]],
                                          "ratio": ratio(out["direct_peak_bytes_rss"][ran[-1]],
                                                         out["direct_peak_bytes_rss"][ran[0]]),
                                          "steps_ratio": steps_list[ran[-1]] / steps_list[ran[0]]}
    out["steps_ratio_longest_vs_shortest"] = steps_list[last] / steps_list[first]
    for name in ("adjoint", "checkpoint", "direct"):
        out[f"{name}_time_ratio_vs_forward"] = [ratio(a, f) for a, f in zip(out[f"{name}_seconds"],
                                                                            out["forward_seconds"])]
    for name in ("adjoint", "checkpoint", "direct"):
        out[f"{name}_time_ratio_vs_forward_paired"] = [ratio(a, f) for a, f in zip(
            col(name, "paired_seconds"), col(name, "paired_forward_seconds"))]
    # -- correctness: every strategy's gradient against direct backprop, where direct ran ------------------
    for name in ("adjoint", "checkpoint"):
        out[f"{name}_vs_direct_rel_err"] = [
            grad_rel_err(a, d) if a["executed"] and d["executed"] else None
            for a, d in zip(results[name], results["direct"])]
    out["adjoint_vs_direct_rel_err_shortest"] = out["adjoint_vs_direct_rel_err"][first]
    # Checkpointing is exact too (autodiff), and also runs where direct backprop does not fit.
    out["adjoint_vs_checkpoint_rel_err"] = [
        grad_rel_err(a, c) if a["executed"] and c["executed"] else None
        for a, c in zip(results["adjoint"], results["checkpoint"])]
    out["reconstruction_error_nm"] = col("adjoint", "reconstruction_error_nm")
    out["loss_D_nm2_ps"] = {name: col(name, "loss") for name in STRATEGIES}
    out["grad_params"] = {name: col(name, "grad_params") for name in ("adjoint", "checkpoint", "direct")}

    tol = 1e-6 if args.precision == "float64" else 1e-2
    time_ratios = [r for r in out["adjoint_time_ratio_vs_forward"] if r is not None]
    paired = [r for r in out["adjoint_time_ratio_vs_forward_paired"] if r is not None]
    err0 = out["adjoint_vs_direct_rel_err_shortest"]
    mem_c, mem_r = out["adjoint_memory_ratio_longest_vs_shortest"], out["adjoint_memory_ratio_longest_vs_shortest_rss"]
    out["goals"] = {
        "adjoint_memory_longest_le_1.1x_shortest_compiled": mem_c is not None and mem_c <= 1.1,
        "adjoint_memory_longest_le_1.1x_shortest_rss": mem_r is not None and mem_r <= 1.1,
        "adjoint_time_le_4x_forward_each_steps": [r is not None and r <= 4.0
                                                  for r in out["adjoint_time_ratio_vs_forward"]],
        "adjoint_time_le_4x_forward_all": bool(time_ratios) and max(time_ratios) <= 4.0,
        "adjoint_time_le_4x_forward_paired_each_steps": [r is not None and r <= 4.0
                                                         for r in out["adjoint_time_ratio_vs_forward_paired"]],
        "adjoint_time_le_4x_forward_paired_all": bool(paired) and max(paired) <= 4.0,
        "direct_memory_grows_about_linearly": (out["direct_memory_ratio_longest_vs_shortest"] or 0)
                                              >= 0.5 * out["steps_ratio_longest_vs_shortest"],
        f"adjoint_matches_direct_at_shortest_rel_err_lt_{tol:g}":
            err0 is not None and max(err0.values()) < tol,
    }
    out["total_wall_seconds"] = time.perf_counter() - t_start
    print(json.dumps(_finite(out), indent=2))
    if plot_path:
        plot(out, plot_path)
        log(f"plot: {plot_path}")


def plot(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(out["steps"])
    colors = {"forward": "tab:gray", "adjoint": "tab:blue", "checkpoint": "tab:green", "direct": "tab:red"}
    labels = {"forward": "forward only", "adjoint": "reverse-time adjoint", "checkpoint": "checkpoint (√steps)",
              "direct": "direct backprop"}
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5.6))
    for name in STRATEGIES:
        c = np.array([np.nan if v is None else v for v in out[f"{name}_peak_bytes_compiled"]], float)
        r = np.array([np.nan if v is None else v for v in out[f"{name}_peak_bytes_rss"]], float)
        a.loglog(steps, c, "o-", color=colors[name], label=f"{labels[name]}: compiled")
        a.loglog(steps, np.where(r > 0, r, np.nan), "s--", color=colors[name], mfc="none",
                 label=f"{labels[name]}: RSS increase")
        for x_, c_, r_ in zip(steps, c, r):
            if np.isfinite(c_) and not np.isfinite(r_):
                a.annotate("not executed\n(compiled only)", (x_, c_), textcoords="offset points", xytext=(-75, -4),
                           fontsize=7, color=colors[name])
        t = np.array([np.nan if v is None else v for v in out[f"{name}_seconds"]], float)
        b.loglog(steps, t, "o-", color=colors[name], label=labels[name])
    a.loglog(steps, out["records_bytes"], ":", color="k", label="records (C(t) scalars)")
    for ax in (a, b):
        ax.set_xticks(steps, [str(x) for x in steps])
        ax.minorticks_off()
    a.set_xlabel("segment length (steps)")
    a.set_ylabel("peak memory (bytes)")
    a.set_title(f"memory, {out['n_atoms']} Ar atoms, {out['precision']}, {out['backend']}", fontsize=10)
    a.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    a.grid(True, which="major", alpha=0.3)
    b.set_xlabel("segment length (steps)")
    b.set_ylabel("seconds (best of repeats)")
    b.set_title("time: loss (forward) or loss + gradient", fontsize=10)
    b.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    b.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
