"""Training iterations with each device's windows vmapped or run one after another (`replicas.gradient_batching`
= "vmap" | "map"), per case: `dmd-dist train` runs of a few iterations in fresh processes, both batchings
alternated, and the median seconds per iteration after the first (which compiles).  Prints one JSON object
(and writes --json); docs/adjoint_cost.md ("Replicas one after another, in training").

    python benchmarks/gradient_batching.py [--cases main4 main2 argon346-f64 ...] [--iterations 6]
        [--rounds 1] [--device auto|cpu|gpu, default cpu] [--json out.json]

Cases (`--list` prints them): the main job (configs/argon_train_quick.toml: 256 Ar, float64, 4 replicas x 2
frames) on 4 and on 2 simulated devices; the paper's 346 Ar (configs/argon_diffusion.toml, 8 replicas x 1
frame, 500-step windows) on one device in float64 and float32; the tiny MPNN and the tiny water IR training
configs on 2 devices.  A GPU run (`--device gpu`) uses its real devices: the simulated device counts apply to
the CPU only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGON346 = ["system.equilibration_steps=1000", "sampling.equilibration_steps=200", "sampling.friction=1.0",
            "sampling.steps_between_frames=200", "segments.steps=500", "replicas.count=8"]
CASES = {  # name: (config, simulated CPU devices, overrides)
    "main4": ("configs/argon_train_quick.toml", 4, []),
    "main2": ("configs/argon_train_quick.toml", 2, []),
    "argon346-f64": ("configs/argon_diffusion.toml", 1, ARGON346),
    "argon346-f32": ("configs/argon_diffusion.toml", 1, [*ARGON346, 'precision="float32"']),
    "mpnn-tiny": ("configs/tiny_argon_mpnn_train.toml", 2, []),
    "water-tiny": ("configs/tiny_water_ir_refine.toml", 2, []),
}


def iteration_seconds(case, batching, iterations, workdir):
    """Seconds of each training iteration (metrics.jsonl) of one fresh `dmd-dist train` run."""
    config, devices, overrides = CASES[case]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    sets = [*overrides, f"train.iterations={iterations}", "output.progress=false",
            f'replicas.gradient_batching="{batching}"']
    cmd = [sys.executable, "-m", "dmd_dist", "train", str(ROOT / config), "--workdir", str(workdir),
           *[a for s in sets for a in ("--set", s)]]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{case} ({batching}) failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows], [r["neighbor_reallocations"] for r in rows]


def main():
    import devices  # benchmarks/devices.py

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1, help="vmap/map pairs per case, alternated")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    devices.add_argument(ap, default="cpu")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    if args.list:
        print(json.dumps(CASES, indent=2))
        return
    devices.select(args.device)
    out = {"iterations": args.iterations, "rounds": args.rounds, "cases": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dmd_batching_") as tmp:
        for case in args.cases:
            runs = {"vmap": [], "map": []}
            for r in range(args.rounds):
                for batching in (("vmap", "map") if r % 2 == 0 else ("map", "vmap")):
                    seconds, reallocations = iteration_seconds(case, batching, args.iterations,
                                                               Path(tmp) / f"{case}-{batching}-{r}")
                    # The first iteration compiles; one that re-allocated a neighbour list compiled again.
                    runs[batching] += [s for s, n, m in zip(seconds[1:], reallocations[1:], reallocations)
                                       if n == m]
            median = {b: statistics.median(s) for b, s in runs.items()}
            out["cases"][case] = {"config": CASES[case][0], "devices": CASES[case][1], "overrides": CASES[case][2],
                                  "seconds_per_iteration": median, "iterations_timed": {b: len(s) for b, s in runs.items()},
                                  "map_over_vmap": median["map"] / median["vmap"]}
            print(json.dumps({case: out["cases"][case]["seconds_per_iteration"]
                              | {"map_over_vmap": round(out["cases"][case]["map_over_vmap"], 3)}}),
                  file=sys.stderr, flush=True)
    import jax

    out.update(seconds=time.perf_counter() - t0, backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
               cpu_count=os.cpu_count())
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
