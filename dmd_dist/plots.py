"""PNG figures of a run's observables (matplotlib, headless).

`plot_curves(observables, outdir)` draws every curve entry of an observables.json dict (VACF, VDOS, IR,
RDF, ...) with its standard-error band and, where given, a target curve on the same axes.
"""

from pathlib import Path

import numpy as np

X_LABELS = {"cm^-1": "wavenumber (cm$^{-1}$)", "ps": "time (ps)", "nm": "r (nm)"}
TITLES = {"vacf": "velocity autocorrelation", "vdos": "vibrational density of states", "ir": "IR spectrum",
          "rdf": "radial distribution function", "stress_acf": "shear-stress autocorrelation"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt


def plot_curve(entry, path, name, target=None, label="model"):
    """One curve entry ({"x", "value", "stderr", "x_unit", "unit"}) to `path`; target = (x, y) or None."""
    plt = _pyplot()
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
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(observables, outdir, targets=None):
    """Every curve in `observables` to outdir/NAME.png; targets: {name: (x, y)}.  Returns the paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    targets = targets or {}
    return [plot_curve(e, outdir / f"{name}.png", name, targets.get(name))
            for name, e in observables.items() if "x" in e]
