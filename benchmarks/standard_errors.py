"""Are `simulate`'s standard errors honest?  Runs `dmd-dist simulate` with several seeds (each seed: its own
prepared start, velocities and noise) and compares, for every scalar observable, the spread of the values
between seeds with the standard error each run reports for itself.  An honest standard error is about the
spread (ratio ~1, within the spread's own uncertainty of 1/sqrt(2 (seeds - 1))); a ratio well above 1 means
the run's samples are not independent (docs/observables.md, "How honest are the standard errors?").
Prints one JSON object (and writes --json).

    python benchmarks/standard_errors.py [--cases water16 ...] [--variants ...] [--seeds 7] [--json out.json]

Cases (`--list`): `water16`, the tiny water-MPNN workflow's teacher A as its `simulate` evaluation runs it
(configs/tiny_water_ir_mpnn_refine.toml with the SPC/Fw teacher's [potential], 16 H2O, 4 replicas x 8
frames); `water32`, the classical IR workflow's start model (configs/tiny_water_ir_refine.toml: SPC/Fw with
the bond force constant x1.10 and the angle's x0.90, 32 H2O) the same way.  Variants:
`configured` (the config's own preparation and per-replica equilibration), `prep6000` (6000 preparation
steps, 3 ps), `replica4000` (each replica equilibrated 4000 steps, 2 ps, before its first frame).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVALUATION = ["replicas.count=4", "sampling.frames=8"]  # the water workflows' evaluation runs
TEACHER_A = ['potential={kind = "spc_fw", cutoff = 0.35, skin = 0.03, neighbor_list = "list", coulomb_alpha = 4.0}',
             'dipole={model = "coulomb"}']
CASES = {  # name: (config, simulated CPU devices, overrides)
    "water16": ("configs/tiny_water_ir_mpnn_refine.toml", 2, [*TEACHER_A, *EVALUATION]),
    "water32": ("configs/tiny_water_ir_refine.toml", 2, EVALUATION),
}
VARIANTS = {"configured": [], "prep6000": ["system.equilibration_steps=6000"],
            "replica4000": ["sampling.equilibration_steps=4000"]}


def observables(case, variant, seed, workdir):
    """observables.json of one fresh `dmd-dist simulate` run."""
    config, devices, overrides = CASES[case]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    sets = [*overrides, *VARIANTS[variant], f"seed={seed}", "output.progress=false"]
    cmd = [sys.executable, "-m", "dmd_dist", "simulate", str(ROOT / config), "--workdir", str(workdir),
           *[a for s in sets for a in ("--set", s)]]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{case} {variant} seed {seed} failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads((workdir / "observables.json").read_text())


def scalars(obs):
    """{name: (value, stderr)} of the scalar observables that carry a finite standard error."""
    return {k: (v["value"], v["stderr"]) for k, v in obs.items()
            if isinstance(v, dict) and isinstance(v.get("value"), (int, float)) and v.get("stderr") is not None
            and math.isfinite(v["stderr"]) and v["stderr"] > 0}


def compare(runs):
    """Per observable: the mean over seeds, the spread between seeds (sample standard deviation), the mean
    reported standard error, and their ratio."""
    names = set.intersection(*(set(r) for r in runs))
    out = {}
    for name in sorted(names):
        values, errors = [r[name][0] for r in runs], [r[name][1] for r in runs]
        spread, se = statistics.stdev(values), statistics.fmean(errors)
        out[name] = {"mean": statistics.fmean(values), "seed_spread": spread, "mean_stderr": se,
                     "spread_over_stderr": spread / se, "values": values, "stderrs": errors}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=["water16"])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=7)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--list", action="store_true", help="print the cases and variants and exit")
    args = ap.parse_args()
    if args.list:
        print(json.dumps({"cases": CASES, "variants": VARIANTS}, indent=2))
        return
    if args.seeds < 3:
        raise SystemExit("--seeds: at least 3 (a spread needs several independent runs)")
    t0 = time.perf_counter()
    result = {"seeds": list(range(args.seeds)), "spread_relative_uncertainty": 1 / math.sqrt(2 * (args.seeds - 1)),
              "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            result["cases"][case] = {"config": CASES[case][0], "overrides": CASES[case][2], "variants": {}}
            for variant in args.variants:
                runs = []
                for seed in range(args.seeds):
                    workdir = Path(tmp) / f"{case}-{variant}-{seed}"
                    runs.append(scalars(observables(case, variant, seed, workdir)))
                    print(f"{case} {variant} seed {seed}: " + ", ".join(
                        f"{k} {runs[-1][k][0]:.5g} ± {runs[-1][k][1]:.2g}" for k in ("ir_peak_stretch", "temperature_nvt")
                        if k in runs[-1]), file=sys.stderr, flush=True)
                result["cases"][case]["variants"][variant] = {"overrides": VARIANTS[variant], "observables": compare(runs)}
    result["seconds"] = time.perf_counter() - t0
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
