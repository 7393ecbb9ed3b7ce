"""PNG figures of a run's observables (matplotlib, headless).

`plot_curves(observables, outdir)` draws every curve entry of an observables.json dict (VACF, VDOS, IR,
RDF, ...) with its standard-error band and, where given, a target curve on the same axes.
"""

from pathlib import Path

import numpy as np

X_LABELS = {"cm^-1": "wavenumber (cm$^{-1}$)", "ps": "time (ps)", "nm": "r (nm)"}
TITLES = {"vacf": "velocity autocorrelation", "vdos": "vibrational density of states", "ir": "IR spectrum",
          "rdf": "radial distribution function", "stress_acf": "shear-stress autocorrelation"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, ax=None, legend_fontsize=None):
    """Legend on `ax` (if given), tight layout, write `path` (creating its folder), close; returns path."""
    if ax is not None:
        ax.legend(frameon=False, fontsize=legend_fontsize)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    pyplot().close(fig)
    return path


def plot_curve(entry, path, name, target=None, label="model"):
    """One curve entry ({"x", "value", "stderr", "x_unit", "unit"}) to `path`; target = (x, y) or None."""
    plt = pyplot()
    x, y = np.asarray(entry["x"], float), np.asarray(entry["value"], float)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(x, y, lw=1.2, label=label)
    if entry.get("stderr") is not None:
        err = np.asarray(entry["stderr"], float)
        if np.all(np.isfinite(err)):
            ax.fill_between(x, y - err, y + err, alpha=0.3, lw=0, label="± standard error")
    if target is not None:
        ax.plot(*target, "k--", lw=1.0, label="target")
    ax.set_xlabel(X_LABELS.get(entry.get("x_unit"), entry.get("x_unit", "")))
    ax.set_ylabel(f"{name} ({entry.get('unit', '')})")
    ax.set_title(TITLES.get(name, name))
    ax.axhline(0.0, color="0.7", lw=0.5)
    return save_figure(fig, path, ax)


def plot_curves(observables, outdir, targets=None):
    """Every curve in `observables` to outdir/NAME.png; targets: {name: (x, y)}.  Returns the paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    targets = targets or {}
    return [plot_curve(e, outdir / f"{name}.png", name, targets.get(name))
            for name, e in observables.items() if "x" in e]


def read_metrics(workdir):
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return []
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training(workdir, targets=None):
    """outdir = workdir/plots: loss.png (total and per target, log scale), params.png (one panel per
    classical parameter), observables.png (each scalar observable with its target).  Returns the paths."""
    plt = pyplot()
    rows = read_metrics(workdir)
    if not rows:
        return []
    outdir = Path(workdir) / "plots"
    outdir.mkdir(parents=True, exist_ok=True)
    it = [r["iteration"] for r in rows]
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.semilogy(it, [max(r["loss"], 1e-300) for r in rows], "k-o", ms=3, label="total")
    for name in rows[-1].get("loss_terms", {}):
        if len(rows[-1]["loss_terms"]) > 1:
            ax.semilogy(it, [r["loss_terms"][name] for r in rows], lw=1, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    fig.tight_layout()
    paths.append(outdir / "loss.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    for key, fname, refs in (("params", "params.png", {}), ("observables", "observables.png", targets or {})):
        names = list(rows[-1].get(key, {}))
        if not names:
            continue
        fig, axes = plt.subplots(len(names), 1, figsize=(6.4, 1.6 + 1.6 * len(names)), dpi=120, sharex=True,
                                 squeeze=False)
        for ax, name in zip(axes[:, 0], names):
            ax.plot(it, [r[key].get(name, np.nan) for r in rows], "-o", ms=3)
            if name in refs:
                ax.axhline(refs[name], color="k", ls="--", lw=1, label="target")
                ax.legend(frameon=False)
            ax.set_ylabel(name)
        axes[-1, 0].set_xlabel("iteration")
        fig.tight_layout()
        paths.append(outdir / fname)
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths
