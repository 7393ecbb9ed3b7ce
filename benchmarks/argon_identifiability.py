"""Identifiability and convergence of the argon refinement (docs/gradient_accuracy.md): reads finished
`train` runs and the independent `simulate` runs of their final parameters, prints one JSON object per run
and draws the parameter paths.

Each run is given as LABEL=TRAIN_DIR[,SIMULATE_DIR].  For every run: the final parameters, the mean over
the last `--window` iterations against the mean over the `--window` before ("settled": every parameter's
relative change below `--tolerance`; for a network, whose metrics name no parameters, the change of its
weight vector relative to its norm, read from a checkpoint per iteration), the iterations' own D estimates
over that window against the target ("converged": settled, and that mean within two standard errors of the
target), and, from the simulate run, D (Green-Kubo) with its standard error and the g(r) error against the
config's `rdf` target when it has one.

    .venv/bin/python benchmarks/argon_identifiability.py --out docs/figures/argon_identifiability.png \\
        "two targets=runs/two,runs/two_eval" "D only=runs/donly,runs/donly_eval"
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmd_dist.plots import pyplot, read_metrics, save_figure  # noqa: E402


def network_path(train_dir, iterations):
    """{"network": (iterations, n_weights)} of a run whose metrics carry no named parameters (an MPNN): every
    iteration's weights, flattened, from its checkpoints (train with train.keep >= the iterations)."""
    from jax.flatten_util import ravel_pytree

    from dmd_dist.checkpoint import restore_arrays

    checkpoints, steps = Path(train_dir) / "checkpoints", range(1, iterations + 1)
    missing = [s for s in steps if not (checkpoints / str(s)).is_dir()]
    if missing:
        raise SystemExit(f"{train_dir}: no checkpoint of iterations {missing}: train with train.keep >= "
                         "train.iterations to judge a network's convergence")
    return {"network": np.stack([np.asarray(ravel_pytree(restore_arrays(checkpoints, s)["params"])[0]) for s in steps])}


def run_summary(train_dir, simulate_dir, window, tolerance, teacher):
    """The run's numbers.  Named parameters (LJ) are judged one by one; a network's weights as one vector:
    its `window`-iteration mean moved by less than `tolerance` of its norm."""
    rows = read_metrics(train_dir)
    names = sorted(rows[-1]["params"])
    if names:
        path = {n: np.array([r["params"][n] for r in rows]) for n in names}
    else:
        path, names = network_path(train_dir, len(rows)), ["network"]
    last = {n: path[n][-window:].mean(axis=0) for n in names}
    before = {n: path[n][-2 * window:-window].mean(axis=0) for n in names}
    change = {n: float(np.linalg.norm(last[n] - before[n]) / np.linalg.norm(last[n])) for n in names}
    shown = {n: float(v) if np.ndim(v) == 0 else f"{np.size(v)} weights" for n, v in last.items()}
    # The iterations' own D estimates (each from that iteration's windows) over the last `window`: a run whose
    # parameters have stopped only because its rates decayed still sits off its target.
    d = np.array([r["observables"]["diffusion"] for r in rows[-window:]])
    target = diffusion_target(Path(train_dir) / "config.toml")
    iteration_d = {"mean": float(d.mean()), "stderr": float(d.std(ddof=1) / np.sqrt(len(d))), "target": target}
    settled = all(c < tolerance for c in change.values())
    out = {"iterations": len(rows), "final": {n: float(path[n][-1]) for n in names if path[n].ndim == 1},
           f"mean_last_{window}": shown, f"relative_change_of_the_{window}_iteration_mean": change,
           "settled": settled, f"iteration_diffusion_last_{window}": iteration_d,
           "converged": settled and abs(iteration_d["mean"] - target) < 2 * iteration_d["stderr"],
           "off_teacher_percent": {n: 100 * (path[n][-1] / teacher[n] - 1) for n in names if n in teacher}}
    if simulate_dir:
        obs = json.loads((Path(simulate_dir) / "observables.json").read_text())
        out["simulate_diffusion"] = {k: obs["diffusion"][k] for k in ("value", "stderr")}
        run = json.loads((Path(simulate_dir) / "run.json").read_text())
        out["simulate_windows"] = run["replicas"] * run["frames"]
        out["rdf_error_vs_target"] = rdf_error(obs, Path(simulate_dir) / "config.toml")
    return out, path


def diffusion_target(config):
    from dmd_dist.config import load_config

    return next(t.value for t in load_config(config).targets if t.observable == "diffusion")


def rdf_error(obs, config):
    """integral of (g - g_target)^2 dr (nm) against the config's rdf target, on simulate's grid."""
    from dmd_dist.config import load_config
    from dmd_dist.losses import read_curve

    cfg = load_config(config)
    files = [t.file for t in cfg.targets if t.observable == "rdf"]
    if not files:
        return None
    x, y = read_curve(files[0])
    r, g = np.asarray(obs["rdf"]["x"]), np.asarray(obs["rdf"]["value"])
    return float(np.trapezoid((g - np.interp(r, x, y)) ** 2, r))


def plot(paths, summaries, teacher, out):
    plt = pyplot()
    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for label, path in paths.items():
        if "lj.epsilon" not in path:  # a network: no (sigma, epsilon) path to draw
            continue
        eps, sig = path["lj.epsilon"], path["lj.sigma"]
        line, = ax_t.plot(np.arange(1, len(eps) + 1), eps, label=label)
        ax_p.plot(sig, eps, color=line.get_color(), lw=1)
        d = summaries[label].get("simulate_diffusion")
        text = f"D {d['value'] * 1e3:.3f}±{d['stderr'] * 1e3:.3f}" if d else ""
        ax_p.plot(sig[-1], eps[-1], "o", color=line.get_color())
        ax_p.annotate(text, (sig[-1], eps[-1]), textcoords="offset points", xytext=(5, -12), fontsize=7)
        ax_p.plot(sig[0], eps[0], "x", color=line.get_color())
    ax_t.axhline(teacher["lj.epsilon"], color="k", ls="--", lw=1, label="teacher")
    ax_t.set_xlabel("iteration")
    ax_t.set_ylabel("ε (kJ/mol)")
    ax_t.set_title("ε during refinement")
    ax_p.plot(teacher["lj.sigma"], teacher["lj.epsilon"], "k*", ms=12, label="teacher")
    ax_p.xaxis.set_major_locator(plt.MaxNLocator(5))
    ax_p.set_xlabel("σ (nm)")
    ax_p.set_ylabel("ε (kJ/mol)")
    ax_p.set_title("(σ, ε) paths: x start, o end (D in 10⁻³ nm²/ps, simulate)")
    save_figure(fig, out, ax_t, legend_fontsize=8)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="LABEL=TRAIN_DIR[,SIMULATE_DIR]")
    p.add_argument("--teacher", default="lj.sigma=0.340,lj.epsilon=0.996", help="the known answer")
    p.add_argument("--window", type=int, default=10, help="iterations per mean of the convergence criterion")
    p.add_argument("--tolerance", type=float, default=0.0025, help="relative change that counts as settled")
    p.add_argument("--out", type=Path, help="figure (PNG)")
    args = p.parse_args(argv)
    teacher = {k: float(v) for k, v in (kv.split("=") for kv in args.teacher.split(","))}
    summaries, paths = {}, {}
    for spec in args.runs:
        label, dirs = spec.split("=", 1)
        train_dir, _, simulate_dir = dirs.partition(",")
        summaries[label], paths[label] = run_summary(train_dir, simulate_dir or None, args.window, args.tolerance,
                                                     teacher)
    if args.out:
        plot(paths, summaries, teacher, args.out)
    print(json.dumps({"teacher": teacher, "runs": summaries}, indent=2))


if __name__ == "__main__":
    main()
