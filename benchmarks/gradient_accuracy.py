"""The training estimator of dD/d(epsilon, sigma) against finite differences of the ensemble D with common
random numbers, per window length (docs/gradient_accuracy.md; dmd_dist.ensemble_gradient).

Every replica's chain gives `frames` start frames, the same for every window length T (the chains at theta
and at each theta +- h are sampled once per run); per segment and T, D_i of its window, dD_i/dtheta through
the window (reverse-time adjoint) and dU(x_i)/dtheta; the estimator's dynamics term <dD_i/dtheta>, its
reweighting term -beta Cov(dU/dtheta, D_i) and their sum, with jackknife standard errors.  The reference:
(D(theta + h) - D(theta - h)) / 2h from the same seeds (common random numbers), every T's D cut from one
longest window per frame, with the standard error of the per-segment differences.  Every standard error is also given over chains
(`stderr_by_chain`: a chain's frames averaged into one block, since they are correlated), with the total's z
on that basis.  Prints one JSON object (and writes --json when given).

    python benchmarks/gradient_accuracy.py [--quick] [--config configs/tiny_argon.toml] [--windows 0.1 0.2 0.4]
        [--replicas 64] [--frames 4] [--set key=value ...] [--device auto|cpu|gpu, default cpu] [--json out.json]
    python benchmarks/gradient_accuracy.py --table out1.json [out2.json ...]   # the rows of the docs' table
    python benchmarks/gradient_accuracy.py --plot fig.png out1.json [...]       # each term against the window

Defaults: configs/tiny_argon.toml (108 LJ argon atoms at Rahman's state), relative steps h of 1% (sigma) and
2% (epsilon).  A classical potential is switched over the last 0.1 nm before its cutoff (0.7-0.8 nm for
tiny_argon, 0.9-1.0 nm for the paper's argon) unless the config or --set gives `potential.switch_onset`:
the pathwise derivative through a window cannot see the force jumps of a plain cutoff.

An MPNN has thousands of parameters: name groups of them as `--params scale:PREFIX ...` (a dotted path
prefix, e.g. scale:readout, scale:representation.interactions.0.filter).  The direction scales that group by
1 + h (ensemble_gradient.scale_directions), and its `--relative-h` is h itself.  Give the network with
`--set potential.checkpoint=RUN` (a pre-trained one: a fresh network is no liquid).  The switch applies to
classical potentials only (the MPNN's envelope is smooth already).
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    import devices  # benchmarks/devices.py

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs/tiny_argon.toml"))
    ap.add_argument("--windows", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.8], help="ps")
    ap.add_argument("--replicas", type=int, default=64)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--params", nargs="+", default=["lj.epsilon", "lj.sigma"])
    ap.add_argument("--relative-h", type=float, nargs="+", default=[0.02, 0.01], help="per parameter, of its value")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    devices.add_argument(ap, default="cpu")
    ap.add_argument("--quick", action="store_true", help="smoke size: 2 windows, 8 replicas x 2 frames")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print the markdown rows of these results and exit")
    ap.add_argument("--plot", nargs="+", metavar=("PNG", "JSON"),
                    help="draw the terms against the window length from these results (a run's JSON, or a JSON "
                         "object of named runs such as docs/gradient_accuracy_argon346.json) and exit")
    args = ap.parse_args()
    if args.table:
        print("\n".join(row for path in args.table for row in table_rows(json.loads(Path(path).read_text()))))
        return
    if args.plot:
        if len(args.plot) < 2:
            ap.error("--plot needs the PNG and at least one JSON")
        print(plot_terms([json.loads(Path(path).read_text()) for path in args.plot[1:]], args.plot[0]))
        return
    devices.select(args.device)
    if args.quick:
        args.windows, args.replicas, args.frames = args.windows[:2], 8, 2

    import numpy as np

    from dmd_dist import assemble, ensemble_gradient
    from dmd_dist.config import load_config
    from dmd_dist.params import flatten

    given = load_config(args.config, args.set).potential
    switch = [] if given.kind == "mpnn" or given.switch_onset else [f"potential.switch_onset={given.cutoff - 0.1:.6g}"]
    cfg = load_config(args.config, [*switch, *args.set, f"replicas.count={args.replicas}", f"sampling.frames={args.frames}"])
    every = cfg.segments.record_every
    lengths = [int(round(w / cfg.segments.dt / every)) * every for w in args.windows]
    # The longest window sets segments.steps, which the config's own checks (record spacing, auto window) see.
    cfg = load_config(args.config, [*switch, *args.set, f"replicas.count={args.replicas}",
                                    f"sampling.frames={args.frames}", f"segments.steps={max(lengths)}"])
    out = {"config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT) else args.config,
           "overrides": args.set, "replicas": args.replicas, "frames": args.frames, "windows": []}
    t0 = time.perf_counter()
    system, potential, params, key = assemble.build(cfg)
    built, species = (system, potential, key), system.topology.species_names
    named = [n for n in args.params if not n.startswith("scale:")]
    u = {**ensemble_gradient.unit_directions(params, named, species),
         **ensemble_gradient.scale_directions(params, [n.removeprefix("scale:") for n in args.params
                                                       if n.startswith("scale:")])}
    values = flatten(params, species)
    # Every window length from the same frames: the chains at theta and at theta +- h are sampled once.
    by_length = ensemble_gradient.window_segments(cfg, params, lengths, u, built=built, progress="estimator")
    diffs = {}
    for name, rel in zip(args.params, args.relative_h, strict=True):
        h = rel if name.startswith("scale:") else rel * abs(values[name])
        for n, d in ensemble_gradient.finite_difference_segments(cfg, params, {name: u[name]}, h, built=built,
                                                                 windows=lengths, progress=True).items():
            diffs.setdefault(n, {})[name] = (h, d[name])
    for n in sorted(by_length):
        segments = by_length[n]
        terms = ensemble_gradient.estimator_terms(segments, cfg.sampling.temperature)
        # The same with a chain's frames as one block: its frames are correlated, and the per-segment jackknife
        # counts them as independent.
        by_chain = ensemble_gradient.estimator_terms(segments, cfg.sampling.temperature, chains=args.replicas)
        row = {"window_ps": n * cfg.segments.dt, "segments": int(segments["D"].size),
               "D": float(segments["D"].mean()), "D_stderr": float(segments["D"].std(ddof=1) / np.sqrt(segments["D"].size)),
               "params": {}}
        for name, (h, diff) in diffs[n].items():
            (fd, fd_err), (_, fd_err_chains) = (ensemble_gradient.mean_and_stderr(diff, c) for c in (None, args.replicas))
            t, tc = terms[name], by_chain[name]
            row["params"][name] = {
                "value": values.get(name), "h": h,
                **{k: {"value": v[0], "stderr": v[1], "stderr_by_chain": tc[k][1]} for k, v in t.items()},
                "finite_difference": {"value": fd, "stderr": fd_err, "stderr_by_chain": fd_err_chains},
                "total_minus_fd_in_stderr": (t["total"][0] - fd) / float(np.hypot(t["total"][1], fd_err)),
                "dynamics_minus_fd_in_stderr": (t["dynamics"][0] - fd) / float(np.hypot(t["dynamics"][1], fd_err)),
                "total_minus_fd_in_stderr_by_chain": (t["total"][0] - fd) / float(np.hypot(tc["total"][1], fd_err_chains)),
            }
        out["windows"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    out["seconds"] = time.perf_counter() - t0
    import jax

    out.update(backend=jax.default_backend(), devices=[str(d) for d in jax.devices()])
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


def table_rows(out):
    """Markdown rows (window, D, parameter, dynamics, reweighting, total, finite difference, z total, z dynamics,
    seconds) of one run's JSON, as in docs/gradient_accuracy.md."""
    def pm(entry):
        return f"{entry['value']:.3g} ± {entry['stderr']:.2g}"

    rows = []
    for w in out["windows"]:
        # Runs that sample once for all windows time the whole run, not each window.
        seconds = f"{w['seconds']:.0f}" if "seconds" in w else f"{out['seconds']:.0f} (all windows)"
        d = f"{w['D'] * 1e3:.3f} ± {w['D_stderr'] * 1e3:.3f}"
        for name, p in w["params"].items():
            rows.append(f"| {w['window_ps']:g} | {d} | {name} | " + " | ".join(
                pm(p[k]) for k in ("dynamics", "reweighting", "total", "finite_difference")) +
                f" | {p['total_minus_fd_in_stderr']:+.2f} | {p['dynamics_minus_fd_in_stderr']:+.2f} | {seconds} |")
    return rows


def parameter_points(results):
    """{(name, value), ...: [window rows]} from runs' JSON (each a run, or an object of named runs): the rows
    of every run at one parameter point, by window length."""
    runs = [r for res in results for r in ([res] if "windows" in res else res.values())]
    points = {}
    for run in runs:
        for w in run["windows"]:
            key = tuple((name, p["value"]) for name, p in w["params"].items() if p["value"] is not None)
            points.setdefault(key, {})[w["window_ps"]] = w
    return {key: [rows[t] for t in sorted(rows)] for key, rows in points.items()}


def plot_terms(results, path):
    """One panel per parameter point and parameter: the finite difference (band: +- 2 standard errors), the
    estimator's total and its window term alone (+- 2 standard errors) against the window length."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from dmd_dist.plots import pyplot, save_figure

    points = parameter_points(results)
    names = sorted({n for rows in points.values() for w in rows for n in w["params"]})
    plt = pyplot()
    fig, axes = plt.subplots(len(points), len(names), figsize=(5.2 * len(names), 3.6 * len(points)), dpi=120,
                             squeeze=False)
    for i, (point, rows) in enumerate(points.items()):
        t = np.array([w["window_ps"] for w in rows])
        for j, name in enumerate(names):
            ax = axes[i, j]

            def series(term):
                return (np.array([w["params"][name][term]["value"] for w in rows]),
                        np.array([2 * w["params"][name][term]["stderr"] for w in rows]))

            fd, fd_err = series("finite_difference")
            ax.fill_between(t, fd - fd_err, fd + fd_err, color="0.85", label="finite difference ± 2 SE")
            ax.plot(t, fd, color="0.4", lw=1)
            for term, style, label in (("total", "o-", "estimator (window + reweighting)"),
                                       ("dynamics", "s--", "window term alone")):
                y, err = series(term)
                ax.errorbar(t, y, err, fmt=style, capsize=3, ms=4, label=label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(t, [f"{v:g}" for v in t])
            ax.set_xlabel("window (ps)")
            ax.set_ylabel(f"dD/d{name.split('.')[-1]}")
            ax.set_title(", ".join(f"{n.split('.')[-1]} {v:g}" for n, v in point), fontsize=10)
    axes[0, 0].legend(frameon=False, fontsize=8)
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
