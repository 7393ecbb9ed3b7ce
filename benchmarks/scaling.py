"""Iteration time of `dmd-dist train` on 1, 2, 4 simulated devices and on 1 and 2 processes, weak-scaling
efficiency, and the share of an iteration spent in collectives.

Every timed run is the real trainer (`python -m dmd_dist train CONFIG --workdir DIR --set ...`) on a fresh
work directory, and its iteration time is the trainer's own `seconds` key of `metrics.jsonl` (wall time
from the start of an iteration's sampling to its loss and gradient norm on the host: NVT sampling of the
frames, the sharded value_and_grad with its psums, the optax update).  The first iteration compiles and
is discarded; the median of the others is reported (and every value is listed).  The parent also notes
when each metrics line appears (polled every 20 ms), so the full period between iterations (metrics
writing, the per-iteration preemption-flag all-gather, everything) is reported as well.

- devices:   one process, XLA_FLAGS=--xla_force_host_platform_device_count=N for N = 1, 2, 4, the same
             total replica count R (a multiple of 4), not pinned (the process may use every core);
- processes: 1 process with R replicas pinned to core 0 (`taskset -c 0`), and 2 processes with R replicas
             each (2R in all) pinned to cores 0 and 1, one simulated device per process, started with an
             explicit coordinator (`--set distributed.coordinator=127.0.0.1:PORT`, `num_processes`,
             `process_id`), the way tests/integration starts them.  weak_scaling_efficiency_2proc =
             t_iter(1 process, R) / t_iter(2 processes, R each): 1.0 is perfect weak scaling.
             Between them, two unrelated 1-process runs at once on cores 0 and 1 (no communication): the
             efficiency splits into hardware (t_1 / t_pair: what a 2-core machine loses with both cores
             busy) times software (t_pair / t_2: what the 2-process run's collectives and waiting cost).
             The 1- and 2-process runs alternate (`--rounds`), so a busy spell of a shared machine hits
             both; the efficiency is computed per round and the median reported.
- collectives: a worker (this script with --worker) started like the 2-process run (and, in the full run, once as one
             process with 4 simulated devices) builds the trainer's own sharded value_and_grad
             (`trainer.sharded_value_and_grad`) on the same config and frames and times, interleaved:
             (a) `allreduce`: one jitted shard_map that psums a pytree of exactly the iteration's
                 all-reduced payload (the parameter gradient and the observable sums and count) over the
                 whole mesh, minus the same call on a mesh of this process's devices only (dispatch,
                 no communication) -> seconds per all-reduce;
             (b) `grad_global` vs `grad_local`: the trainer's value_and_grad of this process's replicas
                 on the global mesh (psums across processes) and on a mesh of its own devices (psums
                 within the process: no communication): the difference is the communication and
                 waiting the collectives add to a gradient evaluation, noise included;
             collective_fraction = n_allreduce x seconds per all-reduce op / t_iter(2 processes), with
             n_allreduce the all-reduce ops one call of the compiled value_and_grad executes (HLO text;
             ops inside while loops counted times the loop's trip count).

    python benchmarks/scaling.py [--quick] [--rounds K] [--replicas R] [--iterations N]

Prints one JSON object on stdout; progress goes to stderr.  See docs/scaling.md.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Full run: the main job's argon (256 atoms, LJ cut at 1 nm, 2 fs) with shorter windows and sampling, so
# that an iteration takes seconds on one core.  Quick run: the test-sized 64-atom argon.
FULL = dict(config="configs/argon_train_quick.toml", replicas=4, iterations=4, rounds=2,
            overrides=["system.equilibration_steps=1000", "sampling.equilibration_steps=200",
                       "sampling.steps_between_frames=100", "sampling.frames=2", "segments.steps=100"])
QUICK = dict(config="configs/tiny_argon_train.toml", replicas=4, iterations=4, rounds=1,
             overrides=["sampling.equilibration_steps=50", "potential.capacity_factor=1.25"])
COMMON = ["output.progress=false", "output.trajectory=false", "train.checkpoint_every=1000", "train.keep=1"]
LIMIT = 900  # seconds per launched process


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny_argon_train (64 atoms), 1 round, no 4-device worker (about 9 min on 2 "
                                                        "loaded cores, 4 with --skip-devices)")
    ap.add_argument("--config", help="training config (default: argon_train_quick.toml with shorter windows; "
                                     "quick: tiny_argon_train.toml)")
    ap.add_argument("--set", dest="overrides", action="append", default=None,
                    help="extra dotted.key=value overrides (repeatable)")
    ap.add_argument("--replicas", type=int, help="replicas per process R (a multiple of 4; default 4)")
    ap.add_argument("--iterations", type=int, help="iterations per run, the first discarded (default 4)")
    ap.add_argument("--rounds", type=int, help="alternating 1-/2-process rounds (default 2; quick 1)")
    ap.add_argument("--worker-repeats", type=int, default=3, help="interleaved repeats of the collective timing")
    ap.add_argument("--skip-devices", action="store_true", help="only the 1-/2-process runs and the workers")
    ap.add_argument("--keep", help="keep the run directories under this path")
    # Hidden: one process of the collective measurement.
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    base = QUICK if args.quick else FULL
    args.config = args.config or base["config"]
    args.replicas = args.replicas or base["replicas"]
    args.iterations = args.iterations or base["iterations"]
    args.rounds = args.rounds or base["rounds"]
    if not args.worker:
        args.overrides = base["overrides"] + COMMON + (args.overrides or [])
    if args.replicas % 4:
        ap.error("--replicas must be a multiple of 4 (sharded over 1, 2 and 4 devices)")
    if args.iterations < 2:
        ap.error("--iterations must be at least 2 (the first compiles and is discarded)")
    return args


# -- launching the trainer ---------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(devices):
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for k in list(env):  # a run inside a real allocation must not see its scheduler
        if k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_", "MPI_LOCAL")):
            del env[k]
    return env


def launch(argv_per_process, devices, cores, workdir=None):
    """Start one process per argv (pinned to `cores[k]` when given); poll `workdir/metrics.jsonl` for the
    arrival time of each line; return (return codes, stderr tails, arrival times, wall seconds)."""
    procs, errs = [], []
    t0 = time.perf_counter()
    for k, argv in enumerate(argv_per_process):
        pin = ["taskset", "-c", str(cores[k])] if cores is not None else []
        err = tempfile.TemporaryFile(mode="w+")
        procs.append(subprocess.Popen(["timeout", "-s", "KILL", str(LIMIT), *pin, sys.executable, *argv],
                                      stdout=subprocess.DEVNULL, stderr=err, text=True, env=clean_env(devices),
                                      cwd=ROOT))
        errs.append(err)
    arrivals, seen = [], 0
    metrics = Path(workdir) / "metrics.jsonl" if workdir else None
    while any(p.poll() is None for p in procs):
        if metrics is not None and metrics.exists():
            n = metrics.read_bytes().count(b"\n")
            if n > seen:
                arrivals += [time.perf_counter()] * (n - seen)
                seen = n
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    tails = []
    for e in errs:
        e.seek(0)
        tails.append(e.read()[-3000:])
        e.close()
    return [p.returncode for p in procs], tails, arrivals, wall


def train_argv(args, workdir, extra=()):
    argv = ["-m", "dmd_dist", "train", str(ROOT / args.config), "--workdir", str(workdir)]
    for o in list(args.overrides) + list(extra):
        argv += ["--set", o]
    return argv


def timed_run(args, label, workdir, n_processes, devices, replicas, cores):
    workdir = Path(workdir)
    extra = [f"replicas.count={replicas}", f"train.iterations={args.iterations}"]
    if n_processes == 1:
        argvs = [train_argv(args, workdir, extra + ["distributed.mode=local"])]
    else:
        port = free_port()
        argvs = [train_argv(args, workdir, extra + [f"distributed.coordinator=127.0.0.1:{port}",
                                                    f"distributed.num_processes={n_processes}",
                                                    f"distributed.process_id={k}"])
                 for k in range(n_processes)]
    codes, tails, arrivals, wall = launch(argvs, devices, cores, workdir)
    if any(codes):
        raise RuntimeError(f"{label}: exit codes {codes}\n" + "\n---\n".join(tails))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in rows]
    periods = [b - a for a, b in zip(arrivals, arrivals[1:])]
    out = {
        "processes": n_processes, "devices_per_process": devices, "replicas_total": replicas,
        "replicas_per_device": replicas // (devices * n_processes),
        "pinned_cores": cores,
        "iteration_seconds": statistics.median(seconds[1:]),
        "iteration_seconds_min": min(seconds[1:]),
        "seconds_all": seconds,  # the first one includes compilation
        "line_period_seconds_median": statistics.median(periods[1:]) if len(periods) > 1 else None,
        "line_periods_all": periods,
        "first_iteration_seconds": seconds[0],
        "process_wall_seconds": wall,
        "masked_replicas": sum(r["masked_replicas"] for r in rows),
        "neighbor_reallocations": rows[-1]["neighbor_reallocations"],
        "log_line": next((line for line in tails[0].splitlines() if "replicas on" in line), None),
    }
    log(f"  {label:28s} iteration {out['iteration_seconds']:.3f} s (median of {len(seconds) - 1}; "
        f"all {', '.join(f'{s:.2f}' for s in seconds)}), process wall {wall:.0f} s")
    return out


def independent_pair(args, label, workdir, replicas):
    """Two unrelated 1-process runs at the same time, pinned to cores 0 and 1, no communication: what the
    machine itself loses when both cores work (shared caches, memory bandwidth, clock), the baseline that
    separates hardware from the 2-process run's own synchronisation."""
    workdir = Path(workdir)
    extra = [f"replicas.count={replicas}", f"train.iterations={args.iterations}", "distributed.mode=local"]
    codes, tails, _, wall = launch([train_argv(args, workdir / str(k), extra) for k in range(2)], 1, [0, 1])
    if any(codes):
        raise RuntimeError(f"{label}: exit codes {codes}\n" + "\n---\n".join(tails))
    seconds = [[json.loads(line)["seconds"] for line in (workdir / str(k) / "metrics.jsonl").read_text().splitlines()]
               for k in range(2)]
    medians = [statistics.median(s[1:]) for s in seconds]
    out = {"iteration_seconds": max(medians), "iteration_seconds_each": medians, "seconds_all": seconds,
           "pinned_cores": [0, 1], "replicas_each": replicas, "process_wall_seconds": wall}
    log(f"  {label:28s} iteration {out['iteration_seconds']:.3f} s (the slower of {medians[0]:.3f}, "
        f"{medians[1]:.3f}), process wall {wall:.0f} s")
    return out


def worker_run(args, label, n_processes, devices, replicas_per_process, cores, tmp):
    port = free_port()
    argvs = []
    for k in range(n_processes):
        out = Path(tmp) / f"worker_{label}_{k}.json"
        extra = [f"replicas.count={replicas_per_process * n_processes}"]
        if n_processes > 1:
            extra += [f"distributed.coordinator=127.0.0.1:{port}", f"distributed.num_processes={n_processes}",
                      f"distributed.process_id={k}"]
        else:
            extra += ["distributed.mode=local"]
        argv = [str(Path(__file__).resolve()), "--worker", "--config", str(ROOT / args.config),
                "--out", str(out), "--worker-repeats", str(args.worker_repeats)]
        for o in list(args.overrides) + extra:
            argv += ["--set", o]
        argvs.append(argv)
    codes, tails, _, wall = launch(argvs, devices, cores)
    if any(codes):
        raise RuntimeError(f"worker {label}: exit codes {codes}\n" + "\n---\n".join(tails))
    res = [json.loads((Path(tmp) / f"worker_{label}_{k}.json").read_text()) for k in range(n_processes)]
    r = dict(res[0])
    r["per_process"] = res
    r["process_wall_seconds"] = wall
    log(f"  worker {label:21s} all-reduce {r['allreduce_seconds'] * 1e6:.0f} us "
        f"({r['allreduce_payload_floats']} numbers), {r['n_allreduce_hlo']} all-reduce ops per gradient "
        f"grad global {r['grad_global_seconds']:.3f} s"
        + (f", local {r['grad_local_seconds']:.3f} s" if r["grad_local_seconds"] is not None else ""))
    return r


# -- the worker: collective timings inside one process of a multi-process (or multi-device) run ----------


def executed_allreduces(hlo):
    """(static all-reduce ops, all-reduce ops executed per call) of a compiled HLO module's text: each op
    counted once per execution of its computation, while-loop bodies times their known trip count."""
    import re

    comps, current = {}, None
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            m = re.match(r"^(ENTRY\s+)?%?([^\s(]+)", line)
            current = m.group(2)
            comps[current] = {"entry": bool(m.group(1)), "allreduce": 0, "calls": []}
            continue
        if current is None or not line.strip() or line.strip() == "}":
            continue
        if " all-reduce(" in line or " all-reduce-start(" in line:
            comps[current]["allreduce"] += 1
        trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
        for kind, name in re.findall(r"\b(body|condition|to_apply|calls)=%?([^\s,)}]+)", line):
            n = int(trip.group(1)) if (kind == "body" and trip) else 1
            comps[current]["calls"].append((name, n + (1 if kind == "condition" and trip else 0)))
        for group in re.findall(r"(?:branch_computations|called_computations)=\{([^}]*)\}", line):
            for name in group.split(","):
                comps[current]["calls"].append((name.strip().lstrip("%"), 1))
    memo = {}

    def executed(name, depth=0):
        c = comps.get(name)
        if c is None or depth > 200:
            return 0
        if name not in memo:
            memo[name] = c["allreduce"] + sum(n * executed(callee, depth + 1) for callee, n in c["calls"])
        return memo[name]

    entry = next(name for name, c in comps.items() if c["entry"])
    return sum(c["allreduce"] for c in comps.values()), executed(entry)


def worker(args):
    import numpy as np

    from dmd_dist.config import load_config
    from dmd_dist.train.parallel import initialize

    cfg = load_config(args.config, args.overrides)
    initialize(cfg.distributed)

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from dmd_dist.driver import OverflowCounter, run_checked, scan_steps
    from dmd_dist import assemble
    from dmd_dist.train import trainer
    from dmd_dist.train.objective import build_objective
    from dmd_dist.mesh import AXIS, from_process_local, local_replicas, replica_mesh, replicate

    system, potential, params, key = assemble.build(cfg)
    objective = build_objective(cfg, system, potential)
    gmesh = replica_mesh()
    multi = jax.process_count() > 1
    # Without communication: this process's devices (several processes), or one device (one process, whose
    # psums over several simulated devices are in-process copies).
    lmesh = replica_mesh(jax.local_devices() if multi else jax.local_devices()[:1])
    n_rep, smp = cfg.replicas.count, cfg.sampling
    offset, n_local = local_replicas(n_rep, gmesh)
    counter = OverflowCounter()

    # This process's frames, sampled locally exactly as the trainer samples them (no collectives here).
    chains = assemble.chains(cfg, system, potential, params, key, n_local, offset)
    nvt = assemble.sampler(cfg, system, potential)
    steps = [smp.equilibration_steps] + [smp.steps_between_frames] * smp.frames
    frames = []
    for i, n in enumerate(steps):
        run = jax.jit(jax.vmap(lambda p, s, n=n: scan_steps(nvt.step, p, s, n)[0], (None, 0)))
        chains = run_checked(lambda s: (run(params, s), None), chains, potential.neighbors, counter,
                             cfg.potential.capacity_factor)[0]
        if i:
            frames.append(chains)
    frames = jax.tree.map(lambda *a: jnp.stack(a, axis=1), *frames)  # (local replicas, frames, ...)

    vg_global = trainer.sharded_value_and_grad(cfg, system, potential, objective, gmesh)
    vg_local = trainer.sharded_value_and_grad(cfg, system, potential, objective, lmesh)
    frames_g = from_process_local(frames, gmesh)
    params_g = replicate(params, gmesh)
    frames_l = jax.device_put(frames, NamedSharding(lmesh, P(AXIS)))
    params_l = jax.device_put(params, NamedSharding(lmesh, P()))
    def count_allreduce(fn, *a):
        return executed_allreduces(fn.lower(*a).compile().as_text())

    n_allreduce_static, n_allreduce = count_allreduce(vg_global, params_g, frames_g)

    # The all-reduced payload of one iteration: the gradient (shape of the parameters) and the summed
    # segment statistics and their count (shapes from the trainer's own per-segment function).
    one = trainer.segment_statistics(cfg, system, potential, objective)
    frame0 = jax.tree.map(lambda a: a[0, 0], frames)
    sums_shape = jax.eval_shape(one, params, frame0)[0]
    payload = (jax.tree.map(np.zeros_like, params),
               jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), sums_shape), np.zeros((), np.int32))
    n_floats = int(sum(np.size(a) for a in jax.tree.leaves(payload)))
    n_bytes = int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(payload)))

    def allreduce_fn(mesh):
        def f(t):
            return jax.tree.map(lambda a: jax.lax.psum(a[0], AXIS), t)
        return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P(AXIS), out_specs=P()))

    def per_device(tree, mesh):  # a leading axis of one row per device of this process in `mesh`
        n = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
        return from_process_local(jax.tree.map(lambda a: np.broadcast_to(a, (n,) + np.shape(a)).copy(), tree), mesh)

    ar_g, ar_l = allreduce_fn(gmesh), allreduce_fn(lmesh)
    pay_g, pay_l = per_device(payload, gmesh), per_device(payload, lmesh)
    n_allreduce_micro = count_allreduce(ar_g, pay_g)[1]

    def check(out):
        (_, (_, _, _, flags, _)), _ = out  # replicated flags: reading them is local
        if int(flags["sampling_overflow"]) or int(flags["segment_overflow"]):
            raise RuntimeError("neighbour list overflow in a timed segment; rerun with a larger "
                               "potential.capacity_factor")
        return out

    calls = {"grad_global": lambda: check(jax.block_until_ready(vg_global(params_g, frames_g)))}
    if multi:  # the same replicas and work on a process-local mesh: no cross-process psum
        calls["grad_local"] = lambda: check(jax.block_until_ready(vg_local(params_l, frames_l)))
    t = time.perf_counter()
    for fn in calls.values():  # compile
        fn()
    compile_seconds = time.perf_counter() - t

    for fn in (ar_g, ar_l):
        jax.block_until_ready(fn(pay_g if fn is ar_g else pay_l))
    times = {k: [] for k in list(calls) + ["allreduce_global", "allreduce_local"]}
    n_ar = 200
    for _ in range(args.worker_repeats):
        for k, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        for k, fn, pay in (("allreduce_global", ar_g, pay_g), ("allreduce_local", ar_l, pay_l)):
            t = time.perf_counter()
            for _ in range(n_ar):
                jax.block_until_ready(fn(pay))
            times[k].append((time.perf_counter() - t) / n_ar)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "process_id": jax.process_index(), "process_count": jax.process_count(),
        "devices_global": gmesh.devices.size, "devices_local": lmesh.devices.size,
        "replicas_total": n_rep, "replicas_local": n_local,
        "n_params": int(sum(np.size(a) for a in jax.tree.leaves(params))),
        "allreduce_payload_floats": n_floats, "allreduce_payload_bytes": n_bytes,
        "n_allreduce_hlo": n_allreduce, "n_allreduce_hlo_static": n_allreduce_static,
        "n_allreduce_hlo_micro": n_allreduce_micro,
        "allreduce_global_seconds": med["allreduce_global"], "allreduce_local_seconds": med["allreduce_local"],
        "allreduce_seconds": med["allreduce_global"] - med["allreduce_local"],
        "collective_seconds_per_gradient": (n_allreduce * (med["allreduce_global"] - med["allreduce_local"])
                                            / max(n_allreduce_micro, 1)),
        "grad_global_seconds": med["grad_global"], "grad_local_seconds": med.get("grad_local"),
        "grad_global_minus_local_seconds": med["grad_global"] - med["grad_local"] if multi else None,
        "times_all": times, "allreduce_calls_per_sample": n_ar, "first_call_seconds": compile_seconds,
    }
    Path(args.out).write_text(json.dumps(result))


# -- the driver ------------------------------------------------------------------------------------------


def main():
    args = parse_args()
    if args.worker:
        return worker(args)
    t_start = time.perf_counter()
    R = args.replicas
    tmp = Path(tempfile.mkdtemp(prefix="dmd_scaling_"))
    log(f"scaling: {args.config} {' '.join(args.overrides)}; R = {R} replicas per process, {args.iterations} "
        f"iterations per run (the first discarded), {args.rounds} round(s); work in {tmp}")
    loads = [os.getloadavg()]
    devices, rounds, workers = {}, [], {}
    try:
        for r in range(args.rounds):
            one = timed_run(args, f"round {r + 1}: 1 process, core 0", tmp / f"p1_{r}", 1, 1, R, [0])
            pair = independent_pair(args, f"round {r + 1}: 2 independent runs", tmp / f"i2_{r}", R)
            two = timed_run(args, f"round {r + 1}: 2 processes, cores 0,1", tmp / f"p2_{r}", 2, 1, 2 * R, [0, 1])
            rounds.append({"one_process": one, "independent_pair": pair, "two_processes": two,
                           "efficiency": one["iteration_seconds"] / two["iteration_seconds"],
                           "hardware_efficiency": one["iteration_seconds"] / pair["iteration_seconds"],
                           "software_efficiency": pair["iteration_seconds"] / two["iteration_seconds"]})
            loads.append(os.getloadavg())
        if not args.skip_devices:
            for n in (1, 2, 4):
                devices[str(n)] = timed_run(args, f"1 process, {n} simulated device(s)", tmp / f"d{n}", 1, n, R, None)
            loads.append(os.getloadavg())
        workers["two_processes"] = worker_run(args, "2 processes", 2, 1, R, [0, 1], tmp)
        if not (args.skip_devices or args.quick):  # in-process all-reduces: not measured by --quick
            workers["four_devices"] = worker_run(args, "1 process, 4 devices", 1, 4, R, None, tmp)
        loads.append(os.getloadavg())
    finally:
        if args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)

    eff = [r["efficiency"] for r in rounds]
    t1 = statistics.median(r["one_process"]["iteration_seconds"] for r in rounds)
    t2 = statistics.median(r["two_processes"]["iteration_seconds"] for r in rounds)
    w = workers["two_processes"]
    collective_seconds = w["collective_seconds_per_gradient"]
    result = {
        "benchmark": "scaling",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": args.config,
        "overrides": args.overrides,
        "replicas_per_process": R,
        "iterations_per_run": args.iterations,
        "timed_iterations_per_run": args.iterations - 1,
        "iteration_seconds_devices": {n: d["iteration_seconds"] for n, d in devices.items()},
        "iteration_seconds_processes": {"1": t1, "2": t2},
        "weak_scaling_efficiency_2proc": statistics.median(eff),
        "weak_scaling_efficiency_2proc_per_round": eff,
        # t_1 / t_pair: the machine's loss with both cores busy (no communication); t_pair / t_2: what the
        # 2-process run loses beyond that (its collectives and waiting).  Their product is the efficiency.
        "hardware_efficiency_2core": statistics.median(r["hardware_efficiency"] for r in rounds),
        "software_efficiency_2proc": statistics.median(r["software_efficiency"] for r in rounds),
        "iteration_seconds_independent_pair": statistics.median(r["independent_pair"]["iteration_seconds"]
                                                                for r in rounds),
        "weak_scaling_efficiency_2proc_line_period": statistics.median(
            r["one_process"]["line_period_seconds_median"] / r["two_processes"]["line_period_seconds_median"]
            for r in rounds),
        "collective_seconds_per_iteration": collective_seconds,
        "collective_fraction": collective_seconds / t2,
        "collective_fraction_4_devices": (workers["four_devices"]["collective_seconds_per_gradient"]
                                          / devices["4"]["iteration_seconds"]) if "four_devices" in workers else None,
        "grad_global_minus_local_fraction": w["grad_global_minus_local_seconds"] / t2,
        "allreduce_ops_per_gradient": w["n_allreduce_hlo"],
        "allreduce_ops_per_gradient_static": w["n_allreduce_hlo_static"],
        "allreduce_seconds_each": w["allreduce_seconds"] / max(w["n_allreduce_hlo_micro"], 1),
        # Same processes, same replicas, interleaved: the gradient's cost of going over 2 processes.
        "grad_over_process_local": w["grad_global_seconds"] / w["grad_local_seconds"],
        "goals": {"weak_scaling_efficiency_2proc_ge_0.9": statistics.median(eff) >= 0.9},
        "devices": devices,
        "rounds": rounds,
        "collective_workers": workers,
        "iteration_time_key": "metrics.jsonl `seconds` of process 0, median over the iterations after the first",
        "collective_method": "n_allreduce (all-reduce ops in the compiled value_and_grad) x the time per all-reduce "
                             "op of a jitted psum of the same payload over the 2-process mesh (minus the same "
                             "call on a process-local mesh: dispatch); divided by t_iter(2 processes)",
        "load_average_during": loads,
        "total_wall_seconds": time.perf_counter() - t_start,
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
    }
    try:
        import importlib.metadata as md
        result["versions"] = {p: md.version(p) for p in ("jax", "jaxlib", "orbax-checkpoint", "numpy")}
    except Exception as e:  # noqa: BLE001
        result["versions"] = str(e)
    log(f"  1 process {t1:.3f} s, 2 processes {t2:.3f} s per iteration: weak-scaling efficiency "
        f"{result['weak_scaling_efficiency_2proc']:.3f} (rounds: {', '.join(f'{e:.3f}' for e in eff)}) = "
        f"hardware {result['hardware_efficiency_2core']:.3f} x software {result['software_efficiency_2proc']:.3f}; "
        f"collectives {collective_seconds * 1e3:.2f} ms per iteration = {result['collective_fraction']:.2e}")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
